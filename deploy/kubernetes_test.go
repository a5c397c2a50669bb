package deploy_test

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/revenprox/revenprox/config"
)

var update = flag.Bool("update", false, "regenerate deploy/kubernetes/prometheusrule.yaml from deploy/prometheus")

const k8sDir = "kubernetes"

// manifests is every object of deploy/kubernetes, decoded strictly into its official Go type.
type manifests struct {
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	services     map[string]*corev1.Service
	statefulSets map[string]*appsv1.StatefulSet
	hpas         map[string]*autoscalingv2.HorizontalPodAutoscaler
	pdbs         map[string]*policyv1.PodDisruptionBudget
	monitors     map[string]*monitoringv1.ServiceMonitor
	rules        map[string]*monitoringv1.PrometheusRule
}

type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

// wantAPIVersion is the API version each kind must use (the ones the decoding types implement).
var wantAPIVersion = map[string]string{
	"ConfigMap": "v1", "Secret": "v1", "Service": "v1", "StatefulSet": "apps/v1",
	"HorizontalPodAutoscaler": "autoscaling/v2", "PodDisruptionBudget": "policy/v1",
	"ServiceMonitor": "monitoring.coreos.com/v1", "PrometheusRule": "monitoring.coreos.com/v1",
}

func loadManifests(t *testing.T) *manifests {
	t.Helper()
	var k kustomization
	if err := sigsyaml.UnmarshalStrict(readFile(t, filepath.Join(k8sDir, "kustomization.yaml")), &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Fatalf("kustomization.yaml: apiVersion/kind %s/%s", k.APIVersion, k.Kind)
	}
	listed := map[string]bool{}
	for _, r := range k.Resources {
		listed[r] = true
	}
	for _, f := range globFiles(t, filepath.Join(k8sDir, "*.yaml")) {
		if base := filepath.Base(f); base != "kustomization.yaml" && !listed[base] {
			t.Errorf("%s is not listed in kustomization.yaml resources", base)
		}
	}
	m := &manifests{
		configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{},
		services: map[string]*corev1.Service{}, statefulSets: map[string]*appsv1.StatefulSet{},
		hpas: map[string]*autoscalingv2.HorizontalPodAutoscaler{}, pdbs: map[string]*policyv1.PodDisruptionBudget{},
		monitors: map[string]*monitoringv1.ServiceMonitor{}, rules: map[string]*monitoringv1.PrometheusRule{},
	}
	for _, r := range k.Resources {
		for i, doc := range splitYAML(readFile(t, filepath.Join(k8sDir, r))) {
			where := fmt.Sprintf("%s document %d", r, i+1)
			var tm metav1.TypeMeta
			if err := sigsyaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			if want, ok := wantAPIVersion[tm.Kind]; !ok || tm.APIVersion != want {
				t.Fatalf("%s: kind %q apiVersion %q, want one of %v", where, tm.Kind, tm.APIVersion, wantAPIVersion)
			}
			var obj interface{ GetName() string }
			switch tm.Kind {
			case "ConfigMap":
				o := &corev1.ConfigMap{}
				obj, m.configMaps[decodeName(t, where, doc, o)] = o, o
			case "Secret":
				o := &corev1.Secret{}
				obj, m.secrets[decodeName(t, where, doc, o)] = o, o
			case "Service":
				o := &corev1.Service{}
				obj, m.services[decodeName(t, where, doc, o)] = o, o
			case "StatefulSet":
				o := &appsv1.StatefulSet{}
				obj, m.statefulSets[decodeName(t, where, doc, o)] = o, o
			case "HorizontalPodAutoscaler":
				o := &autoscalingv2.HorizontalPodAutoscaler{}
				obj, m.hpas[decodeName(t, where, doc, o)] = o, o
			case "PodDisruptionBudget":
				o := &policyv1.PodDisruptionBudget{}
				obj, m.pdbs[decodeName(t, where, doc, o)] = o, o
			case "ServiceMonitor":
				o := &monitoringv1.ServiceMonitor{}
				obj, m.monitors[decodeName(t, where, doc, o)] = o, o
			case "PrometheusRule":
				o := &monitoringv1.PrometheusRule{}
				obj, m.rules[decodeName(t, where, doc, o)] = o, o
			}
			if obj.GetName() == "" {
				t.Fatalf("%s: no metadata.name", where)
			}
		}
	}
	return m
}

// decodeName decodes doc strictly (unknown or duplicate fields are errors) and returns the name.
func decodeName(t *testing.T, where string, doc []byte, into interface{ GetName() string }) string {
	t.Helper()
	if err := sigsyaml.UnmarshalStrict(doc, into); err != nil {
		t.Fatalf("%s: strict decoding: %v", where, err)
	}
	return into.GetName()
}

var reDocSep = regexp.MustCompile(`(?m)^---\s*$`)

func splitYAML(b []byte) [][]byte {
	var docs [][]byte
	for _, d := range reDocSep.Split(string(b), -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func one[T any](t *testing.T, kind string, m map[string]*T) (string, *T) {
	t.Helper()
	if len(m) != 1 {
		t.Fatalf("want exactly one %s, have %d", kind, len(m))
	}
	for k, v := range m {
		return k, v
	}
	return "", nil
}

func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	_, sts := one(t, "StatefulSet", m.statefulSets)
	pod := sts.Spec.Template
	podLabels := labels.Set(pod.Labels)

	stsSel, err := metav1.LabelSelectorAsSelector(sts.Spec.Selector)
	if err != nil || !stsSel.Matches(podLabels) {
		t.Fatalf("StatefulSet selector %v does not select its pod template labels %v (%v)", sts.Spec.Selector, pod.Labels, err)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("want one container, have %d", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}

	t.Run("services", func(t *testing.T) {
		headless, ok := m.services[sts.Spec.ServiceName]
		if !ok {
			t.Fatalf("StatefulSet serviceName %q is not a Service here", sts.Spec.ServiceName)
		}
		if headless.Spec.ClusterIP != corev1.ClusterIPNone || !headless.Spec.PublishNotReadyAddresses {
			t.Errorf("Service %s must be headless with publishNotReadyAddresses (peers find unready pods)", headless.Name)
		}
		if p := servicePort(headless, "cluster"); p == nil || p.Port != 5555 {
			t.Errorf("headless Service needs port cluster 5555, has %v", headless.Spec.Ports)
		}
		for name, svc := range m.services {
			if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) || len(svc.Spec.Selector) == 0 {
				t.Errorf("Service %s selector %v does not select the pods %v", name, svc.Spec.Selector, pod.Labels)
			}
			for _, p := range svc.Spec.Ports {
				if got := containerPort(ports, p.TargetPort); got == 0 {
					t.Errorf("Service %s port %s targets %s, which the container does not declare (%v)", name, p.Name, p.TargetPort.String(), ports)
				}
			}
		}
		client, ok := m.services["revenprox"]
		if !ok {
			t.Fatal(`no client Service "revenprox": its name is the job label the alert rules match (job="revenprox")`)
		}
		if p := servicePort(client, "http"); p == nil || containerPort(ports, p.TargetPort) != 8080 {
			t.Errorf("client Service needs port http to container port 8080")
		}
	})

	t.Run("servicemonitor", func(t *testing.T) {
		_, sm := one(t, "ServiceMonitor", m.monitors)
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		var selected []*corev1.Service
		for _, svc := range m.services {
			if sel.Matches(labels.Set(svc.Labels)) {
				selected = append(selected, svc)
			}
		}
		if len(selected) != 1 || selected[0].Name != "revenprox" {
			t.Fatalf("ServiceMonitor must select exactly the client Service revenprox, selects %d", len(selected))
		}
		if len(sm.Spec.Endpoints) != 1 {
			t.Fatalf("want one endpoint, have %d", len(sm.Spec.Endpoints))
		}
		ep := sm.Spec.Endpoints[0]
		if ep.Port != "http" || servicePort(selected[0], ep.Port) == nil {
			t.Errorf("endpoint port %q is not a port of Service revenprox", ep.Port)
		}
		if ep.Path != "/metrics" || ep.Interval != "15s" {
			t.Errorf("endpoint path %q interval %q, want /metrics 15s", ep.Path, ep.Interval)
		}
		if ep.ScrapeTimeout != "" && durationOf(t, string(ep.ScrapeTimeout)) > durationOf(t, string(ep.Interval)) {
			t.Errorf("scrapeTimeout %s longer than interval %s", ep.ScrapeTimeout, ep.Interval)
		}
		if sm.Spec.JobLabel != "" {
			t.Errorf("jobLabel %q would change the job label the rules match", sm.Spec.JobLabel)
		}
	})

	t.Run("probes", func(t *testing.T) {
		for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
			want := map[string]string{"readiness": "/ready", "liveness": "/health"}[name]
			if p == nil || p.HTTPGet == nil {
				t.Errorf("%s probe must be an httpGet", name)
				continue
			}
			if p.HTTPGet.Path != want || containerPort(ports, p.HTTPGet.Port) != 8080 {
				t.Errorf("%s probe hits %s on %s, want %s on the client port 8080", name, p.HTTPGet.Path, p.HTTPGet.Port.String(), want)
			}
		}
		// A liveness probe must not kill a draining pod (/health is 503 while draining).
		if l := c.LivenessProbe; l != nil && int64(l.PeriodSeconds*l.FailureThreshold) <= *pod.Spec.TerminationGracePeriodSeconds {
			t.Errorf("liveness gives up after %ds, within the %ds grace period of a drain", l.PeriodSeconds*l.FailureThreshold, *pod.Spec.TerminationGracePeriodSeconds)
		}
	})

	t.Run("config", func(t *testing.T) {
		cfg := nodeConfig(t, m, sts)
		grace := time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
		var preStop time.Duration
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
			preStop = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
		}
		if cfg.DrainTimeout.D()+preStop >= grace {
			t.Errorf("terminationGracePeriodSeconds %v must exceed preStop %v + drain_timeout %v", grace, preStop, cfg.DrainTimeout.D())
		}
		for key, want := range map[string]string{"listen": "http", "cluster.listen": "cluster", "admin.listen": "admin"} {
			addr := map[string]string{"listen": cfg.Listen, "cluster.listen": cfg.Cluster.Listen, "admin.listen": cfg.Admin.Listen}[key]
			_, port, err := net.SplitHostPort(addr)
			if err != nil || port != strconv.Itoa(int(ports[want])) {
				t.Errorf("%s %q does not listen on container port %s (%d)", key, addr, want, ports[want])
			}
		}
		_, hpa := one(t, "HorizontalPodAutoscaler", m.hpas)
		seeds := len(cfg.Cluster.Peers)
		if seeds == 0 || hpa.Spec.MinReplicas == nil || int(*hpa.Spec.MinReplicas) < seeds || int(*sts.Spec.Replicas) < seeds {
			t.Errorf("the %d seed peers must all exist: replicas %d, minReplicas %v", seeds, *sts.Spec.Replicas, hpa.Spec.MinReplicas)
		}
		for i, p := range cfg.Cluster.Peers {
			want := fmt.Sprintf("nats-route://%s-%d.%s:%d", sts.Name, i, sts.Spec.ServiceName, ports["cluster"])
			if p != want {
				t.Errorf("cluster.peers[%d] = %s, want %s (pod %d under the headless Service)", i, p, want, i)
			}
		}
		if cfg.Auth.WebhookSecret == "" || cfg.Admin.APIKey == "" {
			t.Error("the Secret must supply auth.webhook_secret and admin.api_key")
		}
	})

	t.Run("hpa", func(t *testing.T) {
		_, hpa := one(t, "HorizontalPodAutoscaler", m.hpas)
		ref := hpa.Spec.ScaleTargetRef
		if ref.Kind != "StatefulSet" || ref.Name != sts.Name || ref.APIVersion != "apps/v1" {
			t.Errorf("HPA targets %s %s/%s, want the StatefulSet %s", ref.APIVersion, ref.Kind, ref.Name, sts.Name)
		}
		if len(hpa.Spec.Metrics) != 1 || hpa.Spec.Metrics[0].Type != autoscalingv2.PodsMetricSourceType || hpa.Spec.Metrics[0].Pods == nil {
			t.Fatalf("HPA must scale on one Pods metric, has %+v", hpa.Spec.Metrics)
		}
		pm := hpa.Spec.Metrics[0].Pods
		if pm.Metric.Name != "revenprox_connections_active" || !exportedNames(t)[pm.Metric.Name] {
			t.Errorf("HPA metric %q, want revenprox_connections_active", pm.Metric.Name)
		}
		if pm.Target.Type != autoscalingv2.AverageValueMetricType || pm.Target.AverageValue == nil || pm.Target.AverageValue.Sign() <= 0 {
			t.Errorf("HPA target must be a positive AverageValue, is %+v", pm.Target)
		}
		if hpa.Spec.MaxReplicas < *hpa.Spec.MinReplicas {
			t.Errorf("maxReplicas %d < minReplicas %d", hpa.Spec.MaxReplicas, *hpa.Spec.MinReplicas)
		}
	})

	t.Run("pdb", func(t *testing.T) {
		_, pdb := one(t, "PodDisruptionBudget", m.pdbs)
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || !sel.Matches(podLabels) || sel.Empty() {
			t.Errorf("PDB selector %v does not select the pods %v", pdb.Spec.Selector, pod.Labels)
		}
		if pdb.Spec.MaxUnavailable == nil && pdb.Spec.MinAvailable == nil {
			t.Error("PDB sets neither maxUnavailable nor minAvailable")
		}
	})

	t.Run("pod", func(t *testing.T) {
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, lim := c.Resources.Requests[r], c.Resources.Limits[r]
			if req.IsZero() || lim.IsZero() || req.Cmp(lim) > 0 {
				t.Errorf("%s: request %s limit %s: both needed, request <= limit", r, req.String(), lim.String())
			}
		}
		sc, psc := c.SecurityContext, pod.Spec.SecurityContext
		if sc == nil || psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot ||
			sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("pod must run as non-root with a read-only root filesystem and no privilege escalation")
		}
		if psc != nil && (psc.RunAsUser == nil || *psc.RunAsUser == 0) {
			t.Error("runAsUser must be a non-zero uid (the image's nonroot user is 65532)")
		}
		for _, e := range c.Env {
			if e.Name == "GOMEMLIMIT" {
				q, err := resource.ParseQuantity(strings.TrimSuffix(e.Value, "B"))
				lim := c.Resources.Limits[corev1.ResourceMemory]
				if err != nil || q.Cmp(lim) >= 0 {
					t.Errorf("GOMEMLIMIT %s must be below the memory limit %s", e.Value, lim.String())
				}
			}
		}
		var mounted bool
		for _, vm := range c.VolumeMounts {
			if vm.MountPath == "/etc/revenprox" {
				mounted = true
			}
		}
		if !mounted {
			t.Error("the image reads /etc/revenprox/config.yaml: mount the ConfigMap at /etc/revenprox")
		}
	})
}

// nodeConfig loads the ConfigMap's config.yaml with the pod's REVENPROX_* environment (env and
// the Secret through envFrom) exactly as a node would, and validates it.
func nodeConfig(t *testing.T, m *manifests, sts *appsv1.StatefulSet) config.Config {
	t.Helper()
	spec := sts.Spec.Template.Spec
	c := spec.Containers[0]
	var cmName string
	for _, v := range spec.Volumes {
		for _, vm := range c.VolumeMounts {
			if vm.Name == v.Name && vm.MountPath == "/etc/revenprox" && v.ConfigMap != nil {
				cmName = v.ConfigMap.Name
			}
		}
	}
	cm, ok := m.configMaps[cmName]
	if !ok || cm.Data["config.yaml"] == "" {
		t.Fatalf("the volume at /etc/revenprox must be a ConfigMap here with key config.yaml (%q)", cmName)
	}
	var environ []string
	for _, ef := range c.EnvFrom {
		if ef.SecretRef == nil {
			continue
		}
		s, ok := m.secrets[ef.SecretRef.Name]
		if !ok {
			t.Fatalf("envFrom Secret %s is not here", ef.SecretRef.Name)
		}
		for k, v := range s.StringData {
			environ = append(environ, k+"="+v)
		}
	}
	for _, e := range c.Env {
		environ = append(environ, e.Name+"="+e.Value)
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(cm.Data["config.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, environ)
	if err != nil {
		t.Fatalf("ConfigMap config.yaml with the pod's environment: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("ConfigMap config.yaml: %v", err)
	}
	return cfg
}

func servicePort(svc *corev1.Service, name string) *corev1.ServicePort {
	for i := range svc.Spec.Ports {
		if svc.Spec.Ports[i].Name == name {
			return &svc.Spec.Ports[i]
		}
	}
	return nil
}

// containerPort resolves a named or numbered port against the container's ports; 0 if unknown.
func containerPort(ports map[string]int32, p intstr.IntOrString) int32 {
	if p.Type == intstr.String {
		return ports[p.StrVal]
	}
	for _, n := range ports {
		if n == p.IntVal {
			return n
		}
	}
	return 0
}

func durationOf(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("duration %q: %v", s, err)
	}
	return d
}

const prometheusRulePath = "kubernetes/prometheusrule.yaml"

// TestPrometheusRuleMatchesRuleFiles: the PrometheusRule carries exactly the groups of the rule
// files, so what Kubernetes evaluates is what promtool tested. -update regenerates it.
func TestPrometheusRuleMatchesRuleFiles(t *testing.T) {
	if *update {
		if err := os.WriteFile(prometheusRulePath, renderPrometheusRule(t), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var pr monitoringv1.PrometheusRule
	if err := sigsyaml.UnmarshalStrict(readFile(t, prometheusRulePath), &pr); err != nil {
		t.Fatalf("%s: %v", prometheusRulePath, err)
	}
	want := loadRuleGroups(t)
	if !reflect.DeepEqual(pr.Spec.Groups, want) {
		t.Fatalf("%s differs from %v: run go test ./deploy -run %s -update", prometheusRulePath, ruleFiles, t.Name())
	}
}

// renderPrometheusRule embeds the rule files' groups, text and comments kept, under spec.
func renderPrometheusRule(t *testing.T) []byte {
	var b bytes.Buffer
	b.WriteString(`# GENERATED from deploy/prometheus/recording.yaml and alerts.yaml; do not edit. After changing
# a rule file: go test ./deploy -run TestPrometheusRuleMatchesRuleFiles -update
# Your Prometheus resource's ruleSelector must match this object's labels (many installs want
# release: <name>).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: revenprox
  labels:
    app.kubernetes.io/name: revenprox
    app.kubernetes.io/instance: revenprox
spec:
  groups:
`)
	for _, f := range ruleFiles {
		text := string(readFile(t, f))
		_, groups, ok := strings.Cut(text, "\ngroups:\n")
		if !ok {
			t.Fatalf("%s: no top-level groups:", f)
		}
		fmt.Fprintf(&b, "    # From deploy/%s\n", f)
		for _, l := range strings.Split(strings.TrimRight(groups, "\n"), "\n") {
			if l == "" {
				b.WriteString("\n")
				continue
			}
			b.WriteString("  " + l + "\n")
		}
	}
	return b.Bytes()
}
