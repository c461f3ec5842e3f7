package scm

import (
	"errors"
	"testing"
	"time"
)

// BenchmarkMove18000 moves 18,000 fds from one endpoint to another per
// iteration, with the receiver draining (and closing) concurrently, and
// reports the cost per fd.
func BenchmarkMove18000(b *testing.B) {
	const perOp = 18000
	snd, rcv := pair(b)
	p := mkpipe(b)
	total := b.N * perOp
	deadline := time.Now().Add(10*time.Minute + time.Duration(b.N)*time.Second)
	done := make(chan error, 1)
	go func() {
		got := 0
		for got < total {
			if err := rcv.Wait(deadline); err != nil {
				done <- err
				return
			}
			err := rcv.Drain(func(m Message) error {
				if m.Kind != KindFDs || len(m.FDs) == 0 {
					return errors.New("unexpected message")
				}
				closeFDs(m.FDs)
				got += len(m.FDs)
				return nil
			})
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	b.ResetTimer()
	for range b.N {
		for i := range perOp {
			if err := snd.Queue(1, uint32(i), p[0]); err != nil {
				b.Fatal(err)
			}
		}
		if err := snd.Flush(); err != nil {
			b.Fatal(err)
		}
		for snd.Pending() {
			if err := snd.Wait(deadline); err != nil {
				b.Fatal(err)
			}
			if err := snd.TrySend(); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(total), "ns/fd")
}
