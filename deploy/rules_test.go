package deploy_test

import (
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	sigsyaml "sigs.k8s.io/yaml"
)

// TestRulesCheck runs promtool check rules on every shipped rule file.
func TestRulesCheck(t *testing.T) {
	bin := promtool(t)
	t.Parallel()
	out, err := run(t, time.Minute, bin, append([]string{"check", "rules"}, ruleFiles...)...)
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

// TestRulesUnit runs every promtool unit test file, in parallel (each is one promtool process).
func TestRulesUnit(t *testing.T) {
	bin := promtool(t)
	t.Parallel()
	files := globFiles(t, "prometheus/tests/*.yaml")
	var wg sync.WaitGroup
	errs := make([]string, len(files))
	for i, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := run(t, 3*time.Minute, bin, "test", "rules", f); err != nil {
				errs[i] = fmt.Sprintf("promtool test rules %s: %v\n%s", f, err, out)
			}
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			t.Error(e)
		}
	}
}

// promtool unit-test file format (only what the coverage check reads; other fields allowed).
type unitTestFile struct {
	RuleFiles []string `json:"rule_files"`
	Tests     []struct {
		Name          string `json:"name"`
		AlertRuleTest []struct {
			AlertName string `json:"alertname"`
			ExpAlerts []any  `json:"exp_alerts"`
		} `json:"alert_rule_test"`
		PromQLExprTest []struct {
			Expr       string `json:"expr"`
			ExpSamples []any  `json:"exp_samples"`
		} `json:"promql_expr_test"`
	} `json:"tests"`
}

// TestRulesCoverage proves the unit tests cover every rule: each alert is expected to fire in
// some test case and expected to stay silent in another, and each recording rule's series is
// checked by some expression test with a sample. The test files must load the shipped files.
func TestRulesCoverage(t *testing.T) {
	fires, silent, recorded := map[string]bool{}, map[string]bool{}, map[string]bool{}
	recNames := recordingNames(t)
	for _, f := range globFiles(t, "prometheus/tests/*.yaml") {
		var tf unitTestFile
		if err := sigsyaml.Unmarshal(readFile(t, f), &tf); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, rf := range tf.RuleFiles {
			p := filepath.Clean(filepath.Join(filepath.Dir(f), rf))
			if !slices.Contains(ruleFiles, filepath.ToSlash(p)) {
				t.Errorf("%s loads %s, which is not a shipped rule file", f, rf)
			}
		}
		for _, tc := range tf.Tests {
			for _, a := range tc.AlertRuleTest {
				if len(a.ExpAlerts) > 0 {
					fires[a.AlertName] = true
				} else {
					silent[a.AlertName] = true
				}
			}
			for _, e := range tc.PromQLExprTest {
				if len(e.ExpSamples) == 0 {
					continue
				}
				for _, n := range metricNames(e.Expr) {
					if recNames[n] {
						recorded[n] = true
					}
				}
			}
		}
	}
	for _, g := range loadRuleGroups(t) {
		for _, r := range g.Rules {
			switch {
			case r.Alert != "":
				if !fires[r.Alert] {
					t.Errorf("alert %s: no unit test expects it to fire", r.Alert)
				}
				if !silent[r.Alert] {
					t.Errorf("alert %s: no unit test expects it to stay silent", r.Alert)
				}
			case r.Record != "" && !recorded[r.Record]:
				t.Errorf("recording rule %s: no promql_expr_test checks a sample of it", r.Record)
			}
		}
	}
}

// TestRulesNameOnlyExportedMetrics: every metric a rule reads is exported by the nodes (or is a
// recording rule of ours), so no alert silently watches a series that never exists.
func TestRulesNameOnlyExportedMetrics(t *testing.T) {
	known := exportedNames(t)
	for n := range recordingNames(t) {
		known[n] = true
	}
	for _, g := range loadRuleGroups(t) {
		for _, r := range g.Rules {
			for _, n := range metricNames(r.Expr.String()) {
				if !known[n] {
					t.Errorf("group %s rule %s%s reads %s, which no node exports", g.Name, r.Alert, r.Record, n)
				}
			}
		}
	}
}

// TestAlertsAnnotated: each alert has a severity the routing understands, a summary, a
// description, and a runbook_url whose anchor is a section of docs/runbook.md.
func TestAlertsAnnotated(t *testing.T) {
	anchors := markdownAnchors(string(readFile(t, "../docs/runbook.md")))
	for _, g := range loadRuleGroups(t) {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
			}
			for _, k := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[k]) == "" {
					t.Errorf("%s: annotation %s missing", r.Alert, k)
				}
			}
			u, err := url.Parse(r.Annotations["runbook_url"])
			if err != nil || !strings.HasSuffix(u.Path, "/docs/runbook.md") || u.Fragment == "" {
				t.Errorf("%s: runbook_url %q does not point at a section of docs/runbook.md", r.Alert, r.Annotations["runbook_url"])
				continue
			}
			if !anchors[u.Fragment] {
				t.Errorf("%s: docs/runbook.md has no section #%s", r.Alert, u.Fragment)
			}
			if u.Fragment != strings.ToLower(r.Alert) {
				t.Errorf("%s: runbook anchor #%s is not the alert's own section", r.Alert, u.Fragment)
			}
		}
	}
}

var reHeading = regexp.MustCompile(`(?m)^#{1,6}\s+(.+?)\s*$`)

// markdownAnchors returns the GitHub-style anchors of a document's headings.
func markdownAnchors(doc string) map[string]bool {
	anchors := map[string]bool{}
	for _, m := range reHeading.FindAllStringSubmatch(doc, -1) {
		var b strings.Builder
		for _, r := range strings.ToLower(m[1]) {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteRune('-')
			}
		}
		anchors[b.String()] = true
	}
	return anchors
}
