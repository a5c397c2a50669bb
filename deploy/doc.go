// Package deploy holds no Go code of the product: it is the home of the deployment artifacts
// (Dockerfile, docker-compose cluster, Kubernetes manifests, Prometheus rules, Grafana dashboards)
// and of the tests that check them against the real tools and the real Go API types:
//
//   - promtool check rules / test rules on deploy/prometheus (unit tests in prometheus/tests),
//   - strict decoding of deploy/kubernetes into k8s.io/api and Prometheus Operator types, with
//     the cross-references between objects checked,
//   - every Grafana panel expression parsed by promtool and its metric names checked against the
//     names the product exports (telemetry.NewMetrics),
//   - the compose cluster's node configs loaded by the config package, and its example webhook,
//   - with -tags e2e, real nodes scraped by a real Prometheus evaluating every expression.
//
// Concurrency: the tests run external processes (promtool, prometheus, python3, revenprox) on
// loopback ports and wait for each before returning; nothing here is shared between tests.
//
// Regenerate deploy/kubernetes/prometheusrule.yaml after changing a rule file:
//
//	go test ./deploy -run TestPrometheusRuleMatchesRuleFiles -update
package deploy
