package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/revenprox/revenprox/topics"
)

func TestPeersViewAndMetrics(t *testing.T) {
	nodes := startMesh(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	a.setStats(NodeStats{Connections: 3, TopicCount: 1, Topics: []topics.PatternCount{pc("chat.x", 2)}})
	// Unsorted and longer than TopTopics: the heartbeat sorts and truncates.
	var many []topics.PatternCount
	for i := range TopTopics + 5 {
		many = append(many, pc("t"+string(rune('a'+i)), i))
	}
	many = append(many, pc("news", 40), pc("chat.x", 30))
	b.setStats(NodeStats{Connections: 5, TopicCount: len(many), Topics: many})

	for _, n := range nodes {
		if got := n.mesh.Peers(); len(got) != 2 {
			t.Fatalf("%s sees %d peers, want 2", n.id, len(got))
		}
		eventually(t, 5*time.Second, n.id+" peers_connected = 2", func() bool {
			return testutil.ToFloat64(n.metrics.PeersConnected) == 2
		})
		lag := testutil.ToFloat64(n.metrics.SyncLag)
		if lag < 0 || lag > (peerTimeoutBeats*testHeartbeat).Seconds() {
			t.Errorf("%s sync_lag_seconds = %v, want within [0, 3 intervals]", n.id, lag)
		}
		if testutil.ToFloat64(n.metrics.SyncMessagesSent) < 1 {
			t.Errorf("%s sent no heartbeats", n.id)
		}
	}

	eventually(t, 5*time.Second, "C's view to carry A's and B's stats", func() bool {
		v := c.mesh.View()
		return v.Totals.Connections == 8 && v.Totals.TopicCount == 1+len(many)
	})
	v := c.mesh.View()
	if v.Node != "C" || v.Mode != ModeEmbedded || !v.Connected || len(v.Nodes) != 3 {
		t.Fatalf("view %+v", v)
	}
	if !v.Nodes[0].Self || v.Nodes[0].ID != "C" || v.Nodes[1].ID != "A" || v.Nodes[2].ID != "B" {
		t.Errorf("view order %v, want C (self), A, B", []string{v.Nodes[0].ID, v.Nodes[1].ID, v.Nodes[2].ID})
	}
	bRow := v.Nodes[2]
	if bRow.Connections != 5 || bRow.Version != "test" || len(bRow.Topics) != TopTopics || bRow.Topics[0] != pc("news", 40) {
		t.Errorf("B row %+v", bRow)
	}
	if v.Totals.Nodes != 3 || len(v.Totals.Topics) != TopTopics || v.Totals.Topics[0] != pc("news", 40) {
		t.Errorf("totals %+v", v.Totals)
	}
	if i := slices.Index(v.Totals.Topics, pc("chat.x", 32)); i != 1 { // news 40, chat.x 2+30, to 14…
		t.Errorf("chat.x total not merged: %+v", v.Totals.Topics)
	}
	body, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"nodes"`, `"totals"`, `"last_seen"`, `"topic_count"`, `"connections":8`, `"self":true`} {
		if !strings.Contains(string(body), key) {
			t.Errorf("GET /cluster JSON lacks %s: %s", key, body)
		}
	}
}

func TestNodeLossDropsPeerAndInterestThenRejoins(t *testing.T) {
	nodes := startMesh(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	c.mesh.Interest("only.c")
	waitInterest(t, a, "only.c", 1)
	cRoute := c.mesh.RouteAddr()

	c.stop(t) // says goodbye
	for _, n := range []*node{a, b} {
		eventually(t, 10*time.Second, n.id+" to drop C", func() bool {
			return len(n.mesh.Peers()) == 1 && testutil.ToFloat64(n.metrics.PeersConnected) == 1
		})
		eventually(t, 10*time.Second, n.id+" to forget C's interest", func() bool { return interest(n, "only.c") == 0 })
	}

	// Same node id and route port, knowing only A: it rejoins the full mesh by itself.
	cfg := meshConfig(a.mesh.RouteAddr())
	cfg.Listen = cRoute
	c2 := startNode(t, "C", cfg)
	waitPeers(t, a, b, c2)
	c2.mesh.Interest("only.c")
	waitInterest(t, b, "only.c", 1)
	b.mesh.Publish(context.Background(), "only.c", []byte(`"back"`), time.Now())
	c2.waitCount(t, "only.c", "only.c", 1)
}

func TestCrashedPeerExpiresAfterThreeHeartbeats(t *testing.T) {
	nodes := startMesh(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	c.mesh.Interest("only.c")
	waitInterest(t, a, "only.c", 1)

	// A crash: C's server vanishes without a goodbye; C's heartbeats stop reaching anyone.
	c.server().Shutdown()
	for _, n := range []*node{a, b} {
		eventually(t, 10*time.Second, n.id+" to expire C", func() bool {
			peers := n.mesh.Peers()
			return len(peers) == 1 && peers[0].ID != "C"
		})
		// The table, not just the filtered list, dropped it (the loop woke at the expiry).
		eventually(t, 10*time.Second, n.id+" peers_connected = 1", func() bool {
			return testutil.ToFloat64(n.metrics.PeersConnected) == 1
		})
		eventually(t, 10*time.Second, n.id+" to forget C's interest", func() bool { return interest(n, "only.c") == 0 })
	}
	if a.mesh.View().Totals.Nodes != 2 {
		t.Errorf("A's view still counts C: %+v", a.mesh.View())
	}
}

func TestRouteCredentials(t *testing.T) {
	cfgA := meshConfig()
	cfgA.RouteUser, cfgA.RoutePassword = "mesh", "s3cret"
	a := startNode(t, "A", cfgA)
	cfgB := meshConfig(a.mesh.RouteAddr()) // peer URL without credentials: the mesh adds them
	cfgB.RouteUser, cfgB.RoutePassword = "mesh", "s3cret"
	b := startNode(t, "B", cfgB)
	waitPeers(t, a, b)
}

func TestRouteTLS(t *testing.T) {
	dir := t.TempDir()
	caFile, certFile, keyFile := writeTestPKI(t, dir)
	cfgA := meshConfig()
	cfgA.TLS.CertFile, cfgA.TLS.KeyFile, cfgA.TLS.CAFile = certFile, keyFile, caFile
	a := startNode(t, "A", cfgA)
	cfgB := meshConfig(a.mesh.RouteAddr())
	cfgB.TLS = cfgA.TLS
	b := startNode(t, "B", cfgB)
	waitPeers(t, a, b)
	b.mesh.Interest("secure")
	waitInterest(t, a, "secure", 1)
	a.mesh.Publish(context.Background(), "secure", []byte(`1`), time.Now())
	b.waitCount(t, "secure", "secure", 1)
}

// writeTestPKI writes a CA and one certificate for 127.0.0.1 (server and client use) as PEM.
func writeTestPKI(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "revenprox test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("node.pem", "CERTIFICATE", der), write("node-key.pem", "EC PRIVATE KEY", keyDER)
}
