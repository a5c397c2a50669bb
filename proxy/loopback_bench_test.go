package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The benchmarks in this file put numbers on the floor under "server CPU per delivery" on the
// machine they run on. On loopback the kernel runs the receiver's TCP processing (and the wake-up
// of the reading thread) inside the sender's write(2), so one write per delivery costs the
// sending thread far more than the proxy's own work (BenchmarkFanout10k, in-memory sockets).
// Both report the CPU time of the delivering thread only (CLOCK_THREAD_CPUTIME_ID, user + system): the
// readers that drain the sockets run on other threads and are not counted, as the load
// generator's reads are not counted in the suite's server CPU.

// threadCPU is the CPU time the calling OS thread has used (the caller holds LockOSThread).
// CLOCK_THREAD_CPUTIME_ID is exact; getrusage(RUSAGE_THREAD) moves in scheduler ticks, which
// reads 0 for a short -benchtime.
func threadCPU(tb testing.TB) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		tb.Skipf("clock_gettime(CLOCK_THREAD_CPUTIME_ID): %v", err)
	}
	return time.Duration(ts.Nano())
}

// loopbackPairs opens n TCP connections over loopback and returns the dialled ends for the
// benchmark to write to; each accepted end is drained by a reader goroutine until it is closed.
// Cleanup closes everything and waits for the readers.
func loopbackPairs(tb testing.TB, n int) (writeEnds []*net.TCPConn) {
	var readEnds []*net.TCPConn
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	var readers sync.WaitGroup
	tb.Cleanup(func() {
		for _, c := range writeEnds {
			_ = c.Close()
		}
		for _, c := range readEnds {
			_ = c.Close()
		}
		readers.Wait()
	})
	for range n {
		w, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			tb.Fatal(err)
		}
		writeEnds = append(writeEnds, w)
		r, err := ln.AcceptTCP()
		if err != nil {
			tb.Fatal(err)
		}
		readEnds = append(readEnds, r)
		readers.Go(func() {
			buf := make([]byte, 64<<10)
			for {
				if _, err := r.Read(buf); err != nil {
					if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
						tb.Error(err)
					}
					return
				}
			}
		})
	}
	return writeEnds
}

// BenchmarkLoopbackWrite is write(2) of message frames to loopback TCP sockets, round-robin over
// 256 connections whose readers keep up: cpu-ns/frame is what one delivery costs the sending
// thread when it is the only frame in its write (frames=1), and how that cost falls when a write
// carries several frames (frames=4, 16), which a subscriber with a backlog allows.
func BenchmarkLoopbackWrite(b *testing.B) {
	frame := encodeMessageFrame("bench.t42", "bench.t42", make100BytePayload(), time.Now().UnixMilli())
	for _, perWrite := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("frames=%d", perWrite), func(b *testing.B) {
			conns := loopbackPairs(b, 256)
			var buf []byte
			for range perWrite {
				buf = append(buf, frame...)
			}
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			start := threadCPU(b)
			for i := range b.N {
				if _, err := conns[i%len(conns)].Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			cpu := threadCPU(b) - start
			b.StopTimer()
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/write")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*perWrite), "cpu-ns/frame")
		})
	}
}

// BenchmarkFanoutLoopback is the node's fan-out (index match, frame encoded once, outbound
// queues, non-blocking writes) to 1,000 subscribers over 10 topics whose connections are real
// loopback TCP sockets: the same shape as the suite's 10,000 subscribers over 100 topics (100 per
// topic), sized to fit this machine's open-file cap with both ends in one process.
// cpu-ns/delivery is the publishing thread's CPU, the figure to set beside BenchmarkLoopbackWrite
// (frames=1): the part above it is the proxy's own work.
func BenchmarkFanoutLoopback(b *testing.B) {
	const subscribers, topicCount = 1000, 10
	m := newMemNode(b, subscribers)
	socks := loopbackPairs(b, subscribers)
	for i, c := range m.conns {
		raw, err := socks[i].SyscallConn()
		if err != nil {
			b.Fatal(err)
		}
		c.out.netConn = socks[i]
		c.out.try = newTryWriter(socks[i], raw)
		m.srv.index.Subscribe(fmt.Sprintf("bench.t%d", i%topicCount), c)
	}
	topicNames := make([]string, topicCount)
	for i := range topicNames {
		topicNames[i] = fmt.Sprintf("bench.t%d", i)
	}
	data := make100BytePayload()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	b.ResetTimer()
	start := threadCPU(b)
	for i := range b.N {
		m.fanout(topicNames[i%topicCount], data, time.Now())
	}
	cpu := threadCPU(b) - start
	m.waitDrained()
	b.StopTimer()
	deliveries := float64(b.N) * subscribers / topicCount
	b.ReportMetric(float64(cpu.Nanoseconds())/deliveries, "cpu-ns/delivery")
	b.ReportMetric(b.Elapsed().Seconds()*1e9/deliveries, "ns/delivery")
}

// make100BytePayload is the suite's payload size: a 100-byte JSON document.
func make100BytePayload() []byte {
	p := []byte(`{"seq":1,"text":"`)
	for len(p) < 98 {
		p = append(p, 'x')
	}
	return append(p, '"', '}')
}
