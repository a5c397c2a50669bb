package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/revenprox/revenprox/bench/loadgen"
)

// Worker protocol: the coordinator re-executes this binary with --worker i/n. The worker
// writes one JSON event per line on stdout (ready, progress, done, result, error) and reads
// one command per line on stdin (go after ready, close after done). EOF on stdin aborts.
type workerEvent struct {
	Event    string              `json:"ev"`
	Progress *loadgen.Progress   `json:"progress,omitempty"`
	Result   *loadgen.Result     `json:"result,omitempty"`
	Step     *loadgen.StepResult `json:"step,omitempty"`
	Error    string              `json:"error,omitempty"`
}

var errWorkerAborted = errors.New("revenprox-bench: coordinator went away")

// pipeControl is the worker side of the protocol.
type pipeControl struct {
	mu  sync.Mutex
	enc *json.Encoder
	in  *bufio.Scanner
}

func (c *pipeControl) send(ev workerEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.enc.Encode(ev)
}

func (c *pipeControl) await(ctx context.Context, want ...string) (string, error) {
	got := make(chan string, 1)
	go func() {
		if c.in.Scan() {
			got <- strings.TrimSpace(c.in.Text())
			return
		}
		got <- ""
	}()
	select {
	case cmd := <-got:
		for _, w := range want {
			if cmd == w {
				return cmd, nil
			}
		}
		return "", errWorkerAborted
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (c *pipeControl) Ready(ctx context.Context) error {
	c.send(workerEvent{Event: "ready"})
	_, err := c.await(ctx, "go")
	return err
}

func (c *pipeControl) Done(ctx context.Context) error {
	c.send(workerEvent{Event: "done"})
	_, err := c.await(ctx, "close")
	return err
}

// Step hands a ramp step to the coordinator, which merges every worker's step, judges it and
// answers next or stop.
func (c *pipeControl) Step(ctx context.Context, st *loadgen.StepResult) (bool, error) {
	c.send(workerEvent{Event: "step", Step: st})
	cmd, err := c.await(ctx, "next", "stop")
	return cmd == "next", err
}

func workerMain(ctx context.Context, f *cliFlags, stdout, stderr io.Writer) int {
	var i, n int
	if _, err := fmt.Sscanf(f.worker, "%d/%d", &i, &n); err != nil || n < 1 || i < 0 || i >= n {
		fmt.Fprintln(stderr, "revenprox-bench: bad --worker", f.worker)
		return 2
	}
	o := f.o
	o.Worker, o.Workers = i, n
	ctl := &pipeControl{enc: json.NewEncoder(stdout), in: bufio.NewScanner(os.Stdin)}
	counters := &loadgen.Counters{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				p := counters.Snapshot()
				ctl.send(workerEvent{Event: "progress", Progress: &p})
			}
		}
	}()
	res, err := loadgen.Run(ctx, o, ctl, counters)
	close(stop)
	wg.Wait()
	ev := workerEvent{Event: "result", Result: res}
	if err != nil {
		ev.Error = err.Error()
	}
	ctl.send(ev)
	if res == nil {
		return 1
	}
	return 0
}

// workerProc is the coordinator's view of one worker.
type workerProc struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	progress loadgen.Progress
	result   *loadgen.Result
	err      string
}

// runWorkers starts n workers, moves them through the phases together, measures the server
// between the phases and merges their results.
func runWorkers(ctx context.Context, f *cliFlags, args []string, n int, m *loadgen.Measurer, stderr io.Writer) (*loadgen.Result, *loadgen.ServerStats, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	type msg struct {
		w  int
		ev workerEvent
	}
	events := make(chan msg, 64)
	procs := make([]*workerProc, n)
	var readers sync.WaitGroup
	var progressMu sync.Mutex // guards every workerProc.progress
	defer func() {
		// Keep reading so no reader blocks on a full channel, then reap the workers.
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			for range events {
			}
		}()
		for _, p := range procs {
			if p != nil {
				p.stdin.Close()
				_ = p.cmd.Wait()
			}
		}
		readers.Wait()
		close(events)
		<-drained
	}()
	for i := range n {
		wargs := append([]string{f.o.Scenario}, args...)
		wargs = append(wargs, "--worker", strconv.Itoa(i)+"/"+strconv.Itoa(n), "--quiet")
		cmd := exec.CommandContext(ctx, exe, wargs...)
		cmd.Stderr = stderr
		cmd.WaitDelay = 5 * time.Second
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return nil, nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, nil, err
		}
		procs[i] = &workerProc{cmd: cmd, stdin: stdin}
		m.GeneratorPIDs = append(m.GeneratorPIDs, cmd.Process.Pid)
		readers.Add(1)
		go func(i int) {
			defer readers.Done()
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 1<<20), 256<<20)
			for sc.Scan() {
				var ev workerEvent
				if json.Unmarshal(sc.Bytes(), &ev) == nil {
					events <- msg{i, ev}
				}
			}
			events <- msg{i, workerEvent{Event: "exit"}}
		}(i)
	}

	stopProgress := startProgress(f, stderr, func() loadgen.Progress {
		progressMu.Lock()
		defer progressMu.Unlock()
		var p loadgen.Progress
		for _, w := range procs {
			if w != nil {
				p.Add(w.progress)
			}
		}
		return p
	})
	defer stopProgress()

	var stats *loadgen.ServerStats
	ready, done, results, exited := 0, 0, 0, 0
	var steps []*loadgen.StepResult // merged ramp steps with the server's figures
	var stepping *loadgen.StepResult
	stepped := 0
	broadcast := func(cmd string) {
		for _, p := range procs {
			_, _ = io.WriteString(p.stdin, cmd+"\n")
		}
	}
	for results+exited < n {
		var ev msg
		select {
		case ev = <-events:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		p := procs[ev.w]
		switch ev.ev.Event {
		case "progress":
			progressMu.Lock()
			p.progress = *ev.ev.Progress
			progressMu.Unlock()
		case "ready":
			if ready++; ready == n {
				ready = 0 // a ramp has one ready per step
				m.AtReady(ctx)
				broadcast("go")
			}
		case "step":
			if stepping == nil {
				stepping = &loadgen.StepResult{}
			}
			if ev.ev.Step != nil {
				stepping.Merge(ev.ev.Step)
			}
			if stepped++; stepped == n {
				stats = m.AtDone(ctx)
				stepping.Server = stats
				steps = append(steps, stepping)
				next := stepping.Judge(f.o.RampP99).Pass
				stepping, stepped = nil, 0
				if next {
					broadcast("next")
				} else {
					broadcast("stop")
				}
			}
		case "done":
			if done++; done == n {
				if len(steps) == 0 {
					stats = m.AtDone(ctx)
				}
				broadcast("close")
			}
		case "result":
			p.result, p.err = ev.ev.Result, ev.ev.Error
			results++
		case "exit":
			if p.result == nil {
				return nil, nil, fmt.Errorf("worker %d exited without a result", ev.w)
			}
		}
	}
	merged := &loadgen.Result{}
	var errs []string
	for i, p := range procs {
		merged.Merge(p.result)
		if p.err != "" {
			errs = append(errs, fmt.Sprintf("worker %d: %s", i, p.err))
		}
	}
	merged.Workers = n
	for i, st := range steps {
		if i < len(merged.Steps) {
			merged.Steps[i].Server = st.Server
		}
	}
	if stats == nil {
		stats = m.AtDone(ctx)
	}
	if len(errs) > 0 {
		return merged, stats, errors.New(strings.Join(errs, "; "))
	}
	return merged, stats, nil
}
