#!/bin/bash
# Compose's one-shot `kafka-setup`: the topics and each user's ACLs, as the
# admin (idempotent: run at every `up`). The users are those of
# docker/k8s/components/strimzi/kafka-users.yaml, with the same rights:
#   coupon-api     Write, Describe  coupon.issue.v1
#   coupon-worker  Read, Describe   coupon.issue.v1, group coupon-issuer
#                  Write, Describe  coupon.issue.v1.dlq
#   coupon-ops     Read, Describe   coupon.issue.v1.dlq, groups coupon-redrive*
#                  Write, Describe  coupon.issue.v1
set -euo pipefail
: "${KAFKA_ADMIN_PASSWORD:?}"
umask 077
cat >/tmp/admin.properties <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="kafka-admin" password="$KAFKA_ADMIN_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=/certs/ca.crt
PROPS
bs=kafka-1:9092,kafka-2:9092,kafka-3:9092
topics() { /opt/kafka/bin/kafka-topics.sh --bootstrap-server "$bs" --command-config /tmp/admin.properties "$@"; }
acl() { /opt/kafka/bin/kafka-acls.sh --bootstrap-server "$bs" --command-config /tmp/admin.properties --add "$@" >/dev/null; }
topics --create --if-not-exists --topic coupon.issue.v1 --partitions 12 --replication-factor 3 \
  --config min.insync.replicas=2
topics --create --if-not-exists --topic coupon.issue.v1.dlq --partitions 3 --replication-factor 3 \
  --config min.insync.replicas=2
acl --allow-principal User:coupon-api --operation Write --operation Describe --topic coupon.issue.v1
acl --allow-principal User:coupon-worker --operation Read --operation Describe --topic coupon.issue.v1
acl --allow-principal User:coupon-worker --operation Read --operation Describe --group coupon-issuer
acl --allow-principal User:coupon-worker --operation Write --operation Describe --topic coupon.issue.v1.dlq
acl --allow-principal User:coupon-ops --operation Read --operation Describe --topic coupon.issue.v1.dlq
acl --allow-principal User:coupon-ops --operation Read --operation Describe --group coupon-redrive \
  --resource-pattern-type prefixed
acl --allow-principal User:coupon-ops --operation Write --operation Describe --topic coupon.issue.v1
echo "topics and ACLs in place"
