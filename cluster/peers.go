package cluster

import (
	"cmp"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/revenprox/revenprox/topics"
)

// Peer is what this node knows about another node (or itself) from its last heartbeat.
type Peer struct {
	ID          string                `json:"id"`
	Version     string                `json:"version"`
	Connections int                   `json:"connections"`
	TopicCount  int                   `json:"topic_count"`
	Topics      []topics.PatternCount `json:"topics"` // the node's most subscribed patterns, at most TopTopics
	LastSeen    time.Time             `json:"last_seen"`
}

// NodeView is one row of View.
type NodeView struct {
	Peer
	Self bool `json:"self"`
	// AgeSeconds is the time since the node's last heartbeat was received (sent, for self).
	AgeSeconds float64 `json:"age_seconds"`
}

// Totals sums the cluster.
type Totals struct {
	Nodes       int `json:"nodes"`
	Connections int `json:"connections"`
	// TopicCount sums every node's topic_count: a pattern subscribed on two nodes counts twice.
	TopicCount int `json:"topic_count"`
	// Topics merges the nodes' top patterns, adding their subscriber counts (top TopTopics).
	Topics []topics.PatternCount `json:"topics"`
}

// View is the JSON of GET /cluster: every live node, this one first, and the cluster totals.
type View struct {
	Node              string     `json:"node"`
	Mode              string     `json:"mode"` // single, embedded or external
	Connected         bool       `json:"connected"`
	HeartbeatInterval float64    `json:"heartbeat_interval_s"`
	Nodes             []NodeView `json:"nodes"`
	Totals            Totals     `json:"totals"`
}

// heartbeat is the JSON body published on <sys>.hb.<node> every heartbeat interval.
type heartbeat struct {
	Node        string                `json:"node"`
	Version     string                `json:"version"`
	Connections int                   `json:"connections"`
	TopicCount  int                   `json:"topic_count"`
	Topics      []topics.PatternCount `json:"topics"`
	SentAt      time.Time             `json:"sent_at"`
	// Leaving is set on the goodbye a node sends from Shutdown, so peers drop it at once.
	Leaving bool `json:"leaving,omitempty"`
}

// peerTable holds this node's last heartbeat and every live peer's. Written by the heartbeat
// goroutine, read by Peers and View.
type peerTable struct {
	mu    sync.RWMutex
	self  Peer
	peers map[string]*Peer
}

func (t *peerTable) init(id, version string) {
	t.self = Peer{ID: id, Version: version, Topics: []topics.PatternCount{}}
	t.peers = make(map[string]*Peer)
}

// Peers returns the live peers (last heartbeat younger than 3 intervals), sorted by id.
func (m *Mesh) Peers() []Peer {
	now := time.Now()
	timeout := peerTimeoutBeats * m.interval
	m.peers.mu.RLock()
	out := make([]Peer, 0, len(m.peers.peers))
	for _, p := range m.peers.peers {
		if now.Sub(p.LastSeen) < timeout {
			out = append(out, *p)
		}
	}
	m.peers.mu.RUnlock()
	slices.SortFunc(out, func(a, b Peer) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// View returns every live node, self included and first, with cluster-wide totals.
func (m *Mesh) View() View {
	now := time.Now()
	m.peers.mu.RLock()
	self := m.peers.self
	m.peers.mu.RUnlock()
	if self.LastSeen.IsZero() {
		self.LastSeen = now // before the first heartbeat
	}
	nodes := []NodeView{{Peer: self, Self: true, AgeSeconds: now.Sub(self.LastSeen).Seconds()}}
	for _, p := range m.Peers() {
		nodes = append(nodes, NodeView{Peer: p, AgeSeconds: now.Sub(p.LastSeen).Seconds()})
	}
	v := View{
		Node:              m.opts.NodeID,
		Mode:              m.mode,
		Connected:         m.Connected(),
		HeartbeatInterval: m.interval.Seconds(),
		Nodes:             nodes,
	}
	merged := make(map[string]int)
	for _, n := range nodes {
		v.Totals.Nodes++
		v.Totals.Connections += n.Connections
		v.Totals.TopicCount += n.TopicCount
		for _, pc := range n.Topics {
			merged[pc.Pattern] += pc.Subscribers
		}
	}
	v.Totals.Topics = make([]topics.PatternCount, 0, len(merged))
	for p, n := range merged {
		v.Totals.Topics = append(v.Totals.Topics, topics.PatternCount{Pattern: p, Subscribers: n})
	}
	sortTop(v.Totals.Topics)
	if len(v.Totals.Topics) > TopTopics {
		v.Totals.Topics = v.Totals.Topics[:TopTopics]
	}
	return v
}

// sortTop orders patterns by subscribers, most first, ties by name.
func sortTop(pcs []topics.PatternCount) {
	slices.SortFunc(pcs, func(a, b topics.PatternCount) int {
		if c := cmp.Compare(b.Subscribers, a.Subscribers); c != 0 {
			return c
		}
		return cmp.Compare(a.Pattern, b.Pattern)
	})
}

// heartbeatLoop is the one goroutine that sends heartbeats, receives the peers' and expires
// silent peers. It sleeps until the next heartbeat or the next peer expiry, whichever is first,
// so a dead peer is dropped as soon as its third interval has passed, without per-peer timers.
func (m *Mesh) heartbeatLoop() {
	defer close(m.beatsDone)
	timer := time.NewTimer(0)
	defer timer.Stop()
	nextBeat := time.Now()
	for {
		select {
		case <-m.stopBeats:
			return
		case msg := <-m.hbCh:
			m.receiveHeartbeat(msg, time.Now())
		case <-timer.C:
		}
		now := time.Now()
		if !now.Before(nextBeat) {
			m.beat(now)
			m.countDrops()
			nextBeat = nextBeat.Add(m.interval)
			if nextBeat.Before(now) { // fell behind (suspended process): do not burst
				nextBeat = now.Add(m.interval)
			}
		}
		wake := nextBeat
		if expiry := m.expirePeers(now); !expiry.IsZero() && expiry.Before(wake) {
			wake = expiry
		}
		timer.Reset(max(wake.Sub(now), time.Millisecond))
	}
}

// beat publishes this node's heartbeat and records it as the self row of the view.
func (m *Mesh) beat(now time.Time) {
	stats := m.opts.Stats()
	top := stats.Topics
	if !slices.IsSortedFunc(top, func(a, b topics.PatternCount) int {
		if c := cmp.Compare(b.Subscribers, a.Subscribers); c != 0 {
			return c
		}
		return cmp.Compare(a.Pattern, b.Pattern)
	}) {
		top = slices.Clone(top)
		sortTop(top)
	}
	top = slices.Clone(top[:min(len(top), TopTopics)]) // never alias the caller's slice
	hb := heartbeat{
		Node:        m.opts.NodeID,
		Version:     m.opts.Version,
		Connections: stats.Connections,
		TopicCount:  stats.TopicCount,
		Topics:      top,
		SentAt:      now.UTC(),
	}
	m.peers.mu.Lock()
	m.peers.self = Peer{ID: hb.Node, Version: hb.Version, Connections: hb.Connections,
		TopicCount: hb.TopicCount, Topics: top, LastSeen: now}
	m.peers.mu.Unlock()
	m.sendHeartbeat(m.nc.Load(), &hb)
}

// sendGoodbye tells the peers this node is leaving.
func (m *Mesh) sendGoodbye(nc *nats.Conn) {
	m.peers.mu.RLock()
	self := m.peers.self
	m.peers.mu.RUnlock()
	m.sendHeartbeat(nc, &heartbeat{Node: m.opts.NodeID, Version: m.opts.Version,
		Connections: self.Connections, TopicCount: self.TopicCount, Topics: self.Topics,
		SentAt: time.Now().UTC(), Leaving: true})
}

func (m *Mesh) sendHeartbeat(nc *nats.Conn, hb *heartbeat) {
	if nc == nil {
		return
	}
	body, err := json.Marshal(hb)
	if err == nil {
		err = nc.Publish(m.hbPrefix+m.opts.NodeID, body)
	}
	if err != nil {
		if ok, suppressed := m.warn.allow("heartbeat"); ok {
			m.log.Warn("heartbeat not sent", "error", err, "suppressed", suppressed)
		}
		return
	}
	m.metrics.SyncMessagesSent.Inc()
}

// receiveHeartbeat records a peer's heartbeat (or goodbye).
func (m *Mesh) receiveHeartbeat(msg *nats.Msg, now time.Time) {
	var hb heartbeat
	if err := json.Unmarshal(msg.Data, &hb); err != nil || hb.Node == "" || !strings.HasSuffix(msg.Subject, "."+hb.Node) {
		if ok, suppressed := m.warn.allow("bad-heartbeat"); ok {
			m.log.Warn("ignoring malformed heartbeat", "subject", msg.Subject, "suppressed", suppressed)
		}
		return
	}
	if hb.Node == m.opts.NodeID {
		// NoEcho hides our own heartbeats, so this is another process using our node id.
		if ok, suppressed := m.warn.allow("duplicate-node"); ok {
			m.log.Warn("another node uses this node's id; node ids must be unique", "node", hb.Node, "suppressed", suppressed)
		}
		return
	}
	if len(hb.Topics) > TopTopics {
		hb.Topics = hb.Topics[:TopTopics]
	}
	if hb.Topics == nil {
		hb.Topics = []topics.PatternCount{}
	}
	m.peers.mu.Lock()
	p, known := m.peers.peers[hb.Node]
	if hb.Leaving {
		if known {
			delete(m.peers.peers, hb.Node)
		}
		m.peers.mu.Unlock()
		if known {
			m.log.Info("peer left", "peer", hb.Node, "reason", "shutdown")
		}
		m.updatePeerMetrics(now)
		return
	}
	if !known {
		p = &Peer{ID: hb.Node}
		m.peers.peers[hb.Node] = p
	}
	p.Version, p.Connections, p.TopicCount, p.Topics, p.LastSeen = hb.Version, hb.Connections, hb.TopicCount, hb.Topics, now
	m.peers.mu.Unlock()
	if !known {
		m.log.Info("peer joined", "peer", hb.Node, "version", hb.Version)
	}
	m.updatePeerMetrics(now)
}

// expirePeers drops peers whose last heartbeat is 3 intervals old and returns when the next
// live peer would expire (zero when there is none).
func (m *Mesh) expirePeers(now time.Time) time.Time {
	timeout := peerTimeoutBeats * m.interval
	var left []string
	var next time.Time
	m.peers.mu.Lock()
	for id, p := range m.peers.peers {
		expiry := p.LastSeen.Add(timeout)
		if !now.Before(expiry) {
			delete(m.peers.peers, id)
			left = append(left, id)
			continue
		}
		if next.IsZero() || expiry.Before(next) {
			next = expiry
		}
	}
	m.peers.mu.Unlock()
	for _, id := range left {
		m.log.Info("peer left", "peer", id, "reason", "no heartbeat", "timeout", timeout)
	}
	m.updatePeerMetrics(now)
	return next
}

// updatePeerMetrics sets peers_connected and sync_lag_seconds (age of the oldest last heartbeat
// among live peers, 0 when there is none).
func (m *Mesh) updatePeerMetrics(now time.Time) {
	m.peers.mu.RLock()
	n := len(m.peers.peers)
	var lag time.Duration
	for _, p := range m.peers.peers {
		lag = max(lag, now.Sub(p.LastSeen))
	}
	m.peers.mu.RUnlock()
	m.metrics.PeersConnected.Set(float64(n))
	m.metrics.SyncLag.Set(lag.Seconds())
}
