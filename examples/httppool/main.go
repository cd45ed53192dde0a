// Command httppool shows a warren.Pool behind an HTTP server: the handler
// publishes each request body through a pool of 4 confirm channels
// (Pool.Do, then Channel.Publish, which on a confirm channel returns only
// once the broker has answered) and replies 202 Accepted only after the
// broker's ack; a nack, a lost channel or an ended request get an error
// status instead.
//
// The server is an httptest.Server on a free loopback port; 64 concurrent
// client requests hit it, more than the pool has channels, so some wait
// for a lease (served in arrival order). It prints the status counts, the
// pool's Stats (WaitCount, channels Opened, the most in use at once) and
// checks that the queue holds exactly one message per 202.
//
// It finds a broker as examples/quickstart does (AMQP_URL, the local default
// broker on 127.0.0.1:5672, or a private node it starts and stops). Its
// queue is exclusive and server-named: the broker deletes it at exit.
//
//	go run ./examples/httppool
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

const (
	requests = 64
	poolSize = 4
)

func main() {
	if err := run(); err != nil {
		log.Printf("httppool: %v", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	b, stopBroker, err := brokertest.ForProgram(ctx, "httppool")
	if err != nil {
		return err
	}
	defer stopBroker()

	client, err := warren.Dial(ctx, b.URL, warren.WithName("warren-example-httppool"))
	if err != nil {
		return err
	}
	defer client.Close(ctx)

	ch, err := client.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close(ctx)
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		return err
	}

	pool, err := client.NewPool(ctx, warren.PoolOptions{Mode: warren.ModeConfirm, Size: poolSize})
	if err != nil {
		return err
	}
	defer pool.Close(ctx)

	h := &publishHandler{pool: pool, queue: q.Name}
	srv := httptest.NewServer(h)
	defer srv.Close()
	fmt.Printf("server %s publishes request bodies to %s through a pool of %d confirm channels\n", srv.URL, q.Name, poolSize)

	start := time.Now()
	statuses, err := post(ctx, srv.Client(), srv.URL, requests)
	if err != nil {
		return err
	}
	fmt.Printf("%d concurrent requests answered in %v: statuses %v\n", requests, time.Since(start).Round(time.Millisecond), statuses)

	s := pool.Stats()
	fmt.Printf("pool stats: max %d, opened %d, in use at most %d, acquires that waited %d (%v in all), acquire timeouts %d\n",
		s.Max, s.Opened, h.maxInUse.Load(), s.WaitCount, s.WaitDuration.Round(time.Microsecond), s.AcquireTimeouts)

	depth, err := ch.QueueDeclare(ctx, q.Name, warren.QueueOptions{Passive: true})
	if err != nil {
		return err
	}
	accepted := statuses[http.StatusAccepted]
	if accepted != requests || depth.Messages != accepted {
		return fmt.Errorf("%d of %d requests accepted, queue holds %d messages", accepted, requests, depth.Messages)
	}
	fmt.Printf("all %d requests got 202 Accepted only after the broker acked; queue %s holds %d messages\n", accepted, q.Name, depth.Messages)
	return nil
}

// publishHandler publishes each POST body to queue and answers 202 once the
// broker has acked it.
type publishHandler struct {
	pool     *warren.Pool
	queue    string
	maxInUse atomic.Int64 // the most leases seen at once, for the demo
}

func (h *publishHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST a message body", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	ctx := r.Context() // a client that goes away ends the wait for a lease or an ack
	err = h.pool.Do(ctx, func(ch warren.Channel) error {
		h.noteInUse()
		return ch.Publish(ctx, "", h.queue, warren.Publishing{
			DeliveryMode: warren.Persistent,
			ContentType:  r.Header.Get("Content-Type"),
			Body:         body,
		})
	})
	switch {
	case err == nil: // acked: the broker has the message
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintln(w, "acked by the broker")
	case errors.Is(err, warren.ErrOutcomeUnknown): // may be in the queue: retry only if duplicates are fine
		log.Printf("httppool: %v", err)
		http.Error(w, "outcome unknown", http.StatusGatewayTimeout)
	default: // nacked, no lease before the request ended, connection lost...
		log.Printf("httppool: %v", err)
		http.Error(w, "not published", http.StatusServiceUnavailable)
	}
}

func (h *publishHandler) noteInUse() {
	n := int64(h.pool.Stats().InUse)
	for {
		cur := h.maxInUse.Load()
		if n <= cur || h.maxInUse.CompareAndSwap(cur, n) {
			return
		}
	}
}

// post sends n concurrent POST requests to url and counts the statuses.
func post(ctx context.Context, hc *http.Client, url string, n int) (map[int]int, error) {
	var (
		mu       sync.Mutex
		statuses = map[int]int{}
		errs     = make([]error, n)
		wg       sync.WaitGroup
	)
	for i := range n {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(fmt.Sprintf("order %d", i)))
			if err != nil {
				errs[i] = err
				return
			}
			req.Header.Set("Content-Type", "text/plain")
			resp, err := hc.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			mu.Lock()
			statuses[resp.StatusCode]++
			mu.Unlock()
		})
	}
	wg.Wait()
	return statuses, errors.Join(errs...)
}
