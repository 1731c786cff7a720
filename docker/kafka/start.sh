#!/bin/bash
# A compose Kafka node (broker and KRaft controller): clients and brokers on
# SASL_SSL with SCRAM-SHA-512 (9092), the controllers on TLS with client
# certificates (9093: SCRAM cannot serve the controller quorum), ACLs on,
# every SCRAM user created when the storage is first formatted. The image's
# own start script cannot add SCRAM users, hence this one.
set -euo pipefail
: "${KAFKA_NODE_ID:?}" "${CLUSTER_ID:?}" "${KAFKA_ADMIN_PASSWORD:?}" "${KAFKA_API_PASSWORD:?}"
: "${KAFKA_WORKER_PASSWORD:?}" "${KAFKA_OPS_PASSWORD:?}"
host="kafka-$KAFKA_NODE_ID"
conf=/tmp/server.properties
umask 077
cat >"$conf" <<PROPS
process.roles=broker,controller
node.id=$KAFKA_NODE_ID
controller.quorum.voters=1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093
listeners=CLIENT://:9092,CONTROLLER://:9093
advertised.listeners=CLIENT://$host:9092
listener.security.protocol.map=CLIENT:SASL_SSL,CONTROLLER:SSL
inter.broker.listener.name=CLIENT
controller.listener.names=CONTROLLER
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="kafka-admin" password="$KAFKA_ADMIN_PASSWORD";
listener.name.controller.ssl.client.auth=required
ssl.keystore.type=PEM
ssl.keystore.location=/certs/$host.pem
ssl.truststore.type=PEM
ssl.truststore.location=/certs/ca.crt
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:kafka-admin;User:CN=kafka-1;User:CN=kafka-2;User:CN=kafka-3
log.dirs=/var/lib/kafka/data
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
PROPS
# The admin client's settings, for the healthcheck and docker/kafka/setup.sh.
cat >/tmp/admin.properties <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="kafka-admin" password="$KAFKA_ADMIN_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=/certs/ca.crt
PROPS
scram() { printf 'SCRAM-SHA-512=[name=%s,password=%s]' "$1" "$2"; }
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted --cluster-id "$CLUSTER_ID" --config "$conf" \
  --add-scram "$(scram kafka-admin "$KAFKA_ADMIN_PASSWORD")" \
  --add-scram "$(scram coupon-api "$KAFKA_API_PASSWORD")" \
  --add-scram "$(scram coupon-worker "$KAFKA_WORKER_PASSWORD")" \
  --add-scram "$(scram coupon-ops "$KAFKA_OPS_PASSWORD")"
exec /opt/kafka/bin/kafka-server-start.sh "$conf"
