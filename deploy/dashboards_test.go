package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// dashboard is the part of a Grafana dashboard JSON the tests read.
type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *datasourceRef           `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		Expr       string         `json:"expr"`
		RefID      string         `json:"refId"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // collapsed rows hold their panels
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// dashboardExpr is one PromQL expression of a dashboard, Grafana variables substituted.
type dashboardExpr struct {
	where string
	expr  string
}

func loadDashboards(t *testing.T) map[string]dashboard {
	t.Helper()
	out := map[string]dashboard{}
	for _, f := range globFiles(t, "grafana/dashboards/*.json") {
		var d dashboard
		if err := json.Unmarshal(readFile(t, f), &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[filepath.Base(f)] = d
	}
	return out
}

var (
	reIntervalVar = regexp.MustCompile(`\$\{?__(?:rate_interval|interval|range)\}?`)
	reVar         = regexp.MustCompile(`\$\{?\w+(?::\w+)?\}?`)
	reLabelValues = regexp.MustCompile(`^label_values\(\s*(.*?)\s*,\s*\w+\s*\)$`)
)

// promQLOf substitutes Grafana's variables the way Grafana would with "All" selected: interval
// variables by a duration, the others (used only inside label matchers) by ".*".
func promQLOf(expr string) string {
	return reVar.ReplaceAllString(reIntervalVar.ReplaceAllString(expr, "5m"), ".*")
}

func flattenPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, flattenPanels(p.Panels)...)
	}
	return out
}

// dashboardExprs returns every panel target and every query variable's series selector.
func dashboardExprs(t *testing.T) []dashboardExpr {
	t.Helper()
	var out []dashboardExpr
	for file, d := range loadDashboards(t) {
		for _, p := range flattenPanels(d.Panels) {
			for _, tg := range p.Targets {
				out = append(out, dashboardExpr{fmt.Sprintf("%s panel %q %s", file, p.Title, tg.RefID), promQLOf(tg.Expr)})
			}
		}
		for _, v := range d.Templating.List {
			if v.Type != "query" {
				continue
			}
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				if err := json.Unmarshal(v.Query, &q.Query); err != nil {
					t.Fatalf("%s variable %s: query %s", file, v.Name, v.Query)
				}
			}
			m := reLabelValues.FindStringSubmatch(q.Query)
			if m == nil {
				t.Fatalf("%s variable %s: query %q is not label_values(selector, label)", file, v.Name, q.Query)
			}
			out = append(out, dashboardExpr{fmt.Sprintf("%s variable %s", file, v.Name), promQLOf(m[1])})
		}
	}
	return out
}

// TestDashboardsStructure: each dashboard parses, has a unique uid and title, a recent schema,
// a datasource variable every panel and target uses, and panels that do not overlap.
func TestDashboardsStructure(t *testing.T) {
	uids, titles := map[string]bool{}, map[string]bool{}
	ds := loadDashboards(t)
	if len(ds) < 6 {
		t.Errorf("want the six dashboards (connections, messages, auth, cluster, resources, slo), have %d", len(ds))
	}
	for file, d := range ds {
		if d.UID == "" || uids[d.UID] || d.Title == "" || titles[d.Title] {
			t.Errorf("%s: uid %q / title %q missing or not unique", file, d.UID, d.Title)
		}
		uids[d.UID], titles[d.Title] = true, true
		if d.SchemaVersion < 36 {
			t.Errorf("%s: schemaVersion %d, want 36 or later", file, d.SchemaVersion)
		}
		var hasDS bool
		for _, v := range d.Templating.List {
			if v.Name == "datasource" && v.Type == "datasource" {
				hasDS = true
			}
		}
		if !hasDS {
			t.Errorf("%s: no datasource template variable", file)
		}
		ids := map[int]bool{}
		var boxes []panel
		for _, p := range flattenPanels(d.Panels) {
			if ids[p.ID] {
				t.Errorf("%s: panel id %d used twice", file, p.ID)
			}
			ids[p.ID] = true
			boxes = append(boxes, p)
			if p.Type == "row" {
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
				t.Errorf("%s panel %q: needs datasource ${datasource} and targets", file, p.Title)
			}
			for _, tg := range p.Targets {
				if tg.Datasource != nil && tg.Datasource.UID != "${datasource}" {
					t.Errorf("%s panel %q target %s: datasource %q", file, p.Title, tg.RefID, tg.Datasource.UID)
				}
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s panel %q target %s: empty expr", file, p.Title, tg.RefID)
				}
			}
		}
		for i, a := range boxes {
			g := a.GridPos
			if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
				t.Errorf("%s panel %q: gridPos %+v outside the 24-column grid", file, a.Title, g)
			}
			for _, b := range boxes[i+1:] {
				h := b.GridPos
				if g.X < h.X+h.W && h.X < g.X+g.W && g.Y < h.Y+h.H && h.Y < g.Y+g.H {
					t.Errorf("%s: panels %q and %q overlap", file, a.Title, b.Title)
				}
			}
		}
	}
}

// TestDashboardsQueriesParseAndNameExportedMetrics: promtool parses every expression (written
// as recording rules into a temporary rule file), and every metric an expression names is one
// the nodes export, one of our recording rules, or Prometheus' own (up, ALERTS).
func TestDashboardsQueriesParseAndNameExportedMetrics(t *testing.T) {
	exprs := dashboardExprs(t)
	known := exportedNames(t)
	for n := range recordingNames(t) {
		known[n] = true
	}
	known["ALERTS"] = true
	for _, e := range exprs {
		for _, n := range metricNames(e.expr) {
			if !known[n] {
				t.Errorf("%s: names %s, which no node exports (expr %s)", e.where, n, e.expr)
			}
		}
	}

	bin := promtool(t)
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboards\n    rules:\n")
	for i, e := range exprs {
		quoted, _ := json.Marshal(e.expr) // a JSON string is a valid YAML scalar
		fmt.Fprintf(&b, "      # %s\n      - record: dashboard:expr_%d\n        expr: %s\n", e.where, i, quoted)
	}
	path := filepath.Join(t.TempDir(), "dashboards.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, time.Minute, bin, "check", "rules", path); err != nil {
		t.Fatalf("promtool check rules on the dashboards' expressions: %v\n%s", err, out)
	}
}
