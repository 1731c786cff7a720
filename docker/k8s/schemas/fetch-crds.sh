#!/usr/bin/env bash
# Regenerates the custom resources' JSON schemas in this directory from the
# projects' own published artifacts, at the versions pinned below (README.md
# says where each comes from). Run it after changing a version; the result
# is committed, so scripts/lint-deploy needs neither the network nor this.
set -euo pipefail
source "$(dirname "$0")/../../../scripts/lib.sh"
HERE="$ROOT/docker/k8s/schemas"

STRIMZI_VERSION=0.45.0               # Maven Central io.strimzi:api + crd-generator
KEDA_VERSION=v2.17.2                 # Go module github.com/kedacore/keda/v2
PROMETHEUS_OPERATOR_VERSION=v0.85.0  # Go module github.com/prometheus-operator/prometheus-operator

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

# Strimzi publishes no CRD files to a registry; its CRDs are generated from
# the annotated model classes of io.strimzi:api by io.strimzi:crd-generator,
# as Strimzi's own build does.
cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId><artifactId>crds</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>io.strimzi</groupId><artifactId>api</artifactId><version>$STRIMZI_VERSION</version></dependency>
    <dependency><groupId>io.strimzi</groupId><artifactId>crd-generator</artifactId><version>$STRIMZI_VERSION</version></dependency>
  </dependencies>
</project>
POM
(cd "$work" && mvn -q dependency:build-classpath -Dmdep.outputFile=cp.txt >/dev/null)
m2="$HOME/.m2/repository/io/strimzi"
java -cp "$(cat "$work/cp.txt"):$m2/api/$STRIMZI_VERSION/api-$STRIMZI_VERSION.jar:$m2/crd-generator/$STRIMZI_VERSION/crd-generator-$STRIMZI_VERSION.jar" \
  io.strimzi.crdgenerator.CrdGenerator --yaml \
  io.strimzi.api.kafka.model.topic.KafkaTopic="$work/kafkatopic.yaml" \
  io.strimzi.api.kafka.model.user.KafkaUser="$work/kafkauser.yaml" 2>/dev/null

# KEDA and the Prometheus operator ship their CRDs inside their Go modules.
keda="$(cd "$work" && go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
po="$(cd "$work" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"

rm -rf "$HERE/kafka.strimzi.io" "$HERE/keda.sh" "$HERE/monitoring.coreos.com"
"$CACHE_DIR/venv/bin/python" "$HERE/crd2jsonschema.py" "$HERE" \
  "$work/kafkatopic.yaml" "$work/kafkauser.yaml" \
  "$keda/config/crd/bases/keda.sh_scaledobjects.yaml" \
  "$keda/config/crd/bases/keda.sh_triggerauthentications.yaml" \
  "$po/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
  "$po/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"
# Only the versions the manifests use are kept (Strimzi's v1alpha1 and
# v1beta1 are deprecated).
rm -f "$HERE"/kafka.strimzi.io/*_v1alpha1.json "$HERE"/kafka.strimzi.io/*_v1beta1.json
