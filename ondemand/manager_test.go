package ondemand_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/odrkit/odrkit/ondemand"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newManager returns a Manager for static-runner jobs with short timeouts.
func newManager(t *testing.T, cfg ondemand.Config) *ondemand.Manager {
	t.Helper()
	mgr, err := ondemand.New(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, mgr.Close()) })
	return mgr
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func submit(t *testing.T, mgr *ondemand.Manager, spec ondemand.JobSpec) *ondemand.Job {
	t.Helper()
	if spec.Kind == "" {
		spec.Kind = "test"
	}
	if spec.Target == nil {
		spec.Target = &ondemand.Target{}
	}
	job, err := mgr.Submit(ctxFor(t), spec)
	require.NoError(t, err)
	return job
}

// nextWithin requests a job for the session and returns nil when none
// arrives within d.
func nextWithin(t *testing.T, mgr *ondemand.Manager, s ondemand.RunnerSession, d time.Duration) *ondemand.Assignment {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	a, err := mgr.NextAssignment(ctx, s)
	if errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	require.NoError(t, err)
	return a
}

func next(t *testing.T, mgr *ondemand.Manager, s ondemand.RunnerSession) *ondemand.Assignment {
	t.Helper()
	a := nextWithin(t, mgr, s, 10*time.Second)
	require.NotNil(t, a, "no job assigned to runner %s", s.RunnerID)
	return a
}

func complete(t *testing.T, mgr *ondemand.Manager, a *ondemand.Assignment, failure *ondemand.JobError) *ondemand.Job {
	t.Helper()
	require.NoError(t, a.Ack(t.Context()))
	require.NoError(t, a.Complete(t.Context(), nil, failure))
	job, err := mgr.Get(t.Context(), a.Job.ID)
	require.NoError(t, err)
	return job
}

func TestTargetsSelectRunners(t *testing.T) {
	tests := []struct {
		name   string
		target ondemand.Target
		runner ondemand.RunnerSession
		takes  bool
	}{
		{"any job, static runner", ondemand.Target{}, ondemand.RunnerSession{RunnerID: "r1"}, true},
		{"labels match", ondemand.Target{Labels: map[string]string{"zone": "eu"}}, ondemand.RunnerSession{RunnerID: "r1", Labels: map[string]string{"zone": "eu", "os": "linux"}}, true},
		{"labels differ", ondemand.Target{Labels: map[string]string{"zone": "eu"}}, ondemand.RunnerSession{RunnerID: "r1", Labels: map[string]string{"zone": "us"}}, false},
		{"labels missing", ondemand.Target{Labels: map[string]string{"zone": "eu"}}, ondemand.RunnerSession{RunnerID: "r1"}, false},
		{"runner ID match", ondemand.Target{RunnerID: "r1"}, ondemand.RunnerSession{RunnerID: "r1"}, true},
		{"runner ID differs", ondemand.Target{RunnerID: "r1"}, ondemand.RunnerSession{RunnerID: "r2"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mgr := newManager(t, ondemand.Config{})
			job := submit(t, mgr, ondemand.JobSpec{Target: &tt.target})
			a := nextWithin(t, mgr, tt.runner, 100*time.Millisecond)
			if !tt.takes {
				require.Nil(t, a, "runner took job %s", job.ID)
				return
			}
			require.NotNil(t, a)
			require.Equal(t, job.ID, a.Job.ID)
		})
	}
}

func TestOnDemandRunnerWithoutTaskRejected(t *testing.T) {
	mgr := newManager(t, ondemand.Config{})
	submit(t, mgr, ondemand.JobSpec{})
	_, err := mgr.NextAssignment(t.Context(), ondemand.RunnerSession{RunnerID: "r1", OnDemand: true})
	require.ErrorIs(t, err, ondemand.ErrUnknownRunner)
}

func TestAssignmentOrder(t *testing.T) {
	mgr := newManager(t, ondemand.Config{})
	anyJob := submit(t, mgr, ondemand.JobSpec{ID: "any"})
	labelled := submit(t, mgr, ondemand.JobSpec{ID: "labelled", Target: &ondemand.Target{Labels: map[string]string{"a": "1"}}})
	byID1 := submit(t, mgr, ondemand.JobSpec{ID: "by-id-1", Target: &ondemand.Target{RunnerID: "r1"}})
	byID2 := submit(t, mgr, ondemand.JobSpec{ID: "by-id-2", Target: &ondemand.Target{RunnerID: "r1"}})

	s := ondemand.RunnerSession{RunnerID: "r1", Labels: map[string]string{"a": "1"}}
	var order []string
	for range 4 {
		a := next(t, mgr, s)
		order = append(order, a.Job.ID)
		complete(t, mgr, a, nil)
	}
	require.Equal(t, []string{byID1.ID, byID2.ID, labelled.ID, anyJob.ID}, order)
}

func TestWaitingRunnerGetsNewJob(t *testing.T) {
	mgr := newManager(t, ondemand.Config{})
	got := make(chan *ondemand.Assignment, 1)
	go func() {
		a, err := mgr.NextAssignment(t.Context(), ondemand.RunnerSession{RunnerID: "r1"})
		if err == nil {
			got <- a
		}
		close(got)
	}()
	time.Sleep(20 * time.Millisecond)
	job := submit(t, mgr, ondemand.JobSpec{})
	a := <-got
	require.NotNil(t, a)
	require.Equal(t, job.ID, a.Job.ID)
	require.Equal(t, ondemand.StateSuccess, complete(t, mgr, a, nil).State)
}

func TestDependencies(t *testing.T) {
	tests := []struct {
		name         string
		firstFails   bool
		allowFailure bool
		wantState    ondemand.State
		wantReason   ondemand.Reason
	}{
		{"dependency succeeds", false, false, ondemand.StateSuccess, ""},
		{"dependency fails", true, false, ondemand.StateError, ondemand.ReasonDependencyFailed},
		{"dependency fails, failure allowed", true, true, ondemand.StateSuccess, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mgr := newManager(t, ondemand.Config{})
			first := submit(t, mgr, ondemand.JobSpec{ID: "first"})
			second := submit(t, mgr, ondemand.JobSpec{ID: "second", DependsOn: []ondemand.Dependency{{JobID: first.ID, AllowFailure: tt.allowFailure}}})
			s := ondemand.RunnerSession{RunnerID: "r1"}

			a := next(t, mgr, s)
			require.Equal(t, first.ID, a.Job.ID, "the dependent job ran first")
			require.Nil(t, nextWithin(t, mgr, s, 50*time.Millisecond), "the dependent job ran before its dependency ended")
			var failure *ondemand.JobError
			if tt.firstFails {
				failure = &ondemand.JobError{Message: "broken"}
			}
			complete(t, mgr, a, failure)

			if tt.wantState == ondemand.StateSuccess {
				a = next(t, mgr, s)
				require.Equal(t, second.ID, a.Job.ID)
				complete(t, mgr, a, nil)
			}
			got, err := mgr.Wait(ctxFor(t), second.ID)
			require.NoError(t, err)
			require.Equal(t, tt.wantState, got.State)
			if tt.wantReason != "" {
				require.Equal(t, tt.wantReason, got.Error.Reason)
				require.Contains(t, got.Error.Message, "first")
				require.Contains(t, got.Error.Message, "broken")
			}
		})
	}
}

func TestAckTimeoutRequeuesJob(t *testing.T) {
	mgr := newManager(t, ondemand.Config{AckTimeout: 50 * time.Millisecond})
	job := submit(t, mgr, ondemand.JobSpec{})
	s := ondemand.RunnerSession{RunnerID: "r1"}
	first := next(t, mgr, s)

	select {
	case <-first.Ended():
	case <-time.After(10 * time.Second):
		t.Fatal("the assignment did not end at the ack timeout")
	}
	require.ErrorIs(t, first.Ack(t.Context()), ondemand.ErrAssignmentEnded)

	second := next(t, mgr, s)
	require.Equal(t, job.ID, second.Job.ID)
	require.Equal(t, 2, second.Job.Attempt)
	require.Equal(t, ondemand.StateSuccess, complete(t, mgr, second, nil).State)
}

func TestNackRequeuesJob(t *testing.T) {
	mgr := newManager(t, ondemand.Config{})
	job := submit(t, mgr, ondemand.JobSpec{})
	a := next(t, mgr, ondemand.RunnerSession{RunnerID: "r1"})
	require.NoError(t, a.Nack(t.Context(), "no handler"))
	got, err := mgr.Get(t.Context(), job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateQueued, got.State)

	b := next(t, mgr, ondemand.RunnerSession{RunnerID: "r2"})
	require.Equal(t, job.ID, b.Job.ID)
}

func TestHeartbeatTimeoutFailsJob(t *testing.T) {
	mgr := newManager(t, ondemand.Config{HeartbeatTimeout: 100 * time.Millisecond, HeartbeatInterval: 30 * time.Millisecond})
	job := submit(t, mgr, ondemand.JobSpec{})
	a := next(t, mgr, ondemand.RunnerSession{RunnerID: "r1"})
	require.NoError(t, a.Ack(t.Context()))

	// Heartbeats keep the job alive past the timeout.
	for range 5 {
		time.Sleep(40 * time.Millisecond)
		require.NoError(t, a.Heartbeat())
	}
	got, err := mgr.Get(t.Context(), job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateRunning, got.State)

	done, err := mgr.Wait(ctxFor(t), job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateError, done.State)
	require.Equal(t, ondemand.ReasonRunnerLost, done.Error.Reason)
	require.ErrorIs(t, a.Complete(t.Context(), nil, nil), ondemand.ErrAssignmentEnded)
}

func TestAbandonedJobFailsAsRunnerLost(t *testing.T) {
	mgr := newManager(t, ondemand.Config{})
	job := submit(t, mgr, ondemand.JobSpec{})
	a := next(t, mgr, ondemand.RunnerSession{RunnerID: "r1"})
	require.NoError(t, a.Ack(t.Context()))
	a.Abandon(errors.New("stream reset"))

	got, err := mgr.Get(t.Context(), job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateError, got.State)
	require.Equal(t, ondemand.ReasonRunnerLost, got.Error.Reason)
	require.Contains(t, got.Error.Message, "stream reset")
}

func TestMaxDurationFailsJob(t *testing.T) {
	mgr := newManager(t, ondemand.Config{})
	job := submit(t, mgr, ondemand.JobSpec{MaxDuration: 50 * time.Millisecond})
	a := next(t, mgr, ondemand.RunnerSession{RunnerID: "r1"})
	require.NoError(t, a.Ack(t.Context()))

	done, err := mgr.Wait(ctxFor(t), job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.ReasonDeadlineExceeded, done.Error.Reason)
	<-a.Ended()
}

func TestCancel(t *testing.T) {
	t.Run("queued", func(t *testing.T) {
		mgr := newManager(t, ondemand.Config{})
		job := submit(t, mgr, ondemand.JobSpec{})
		require.NoError(t, mgr.Cancel(t.Context(), job.ID))
		got, err := mgr.Get(t.Context(), job.ID)
		require.NoError(t, err)
		require.Equal(t, ondemand.StateCancelled, got.State)
		require.Nil(t, nextWithin(t, mgr, ondemand.RunnerSession{RunnerID: "r1"}, 50*time.Millisecond))
	})
	t.Run("running, runner cooperates", func(t *testing.T) {
		mgr := newManager(t, ondemand.Config{})
		job := submit(t, mgr, ondemand.JobSpec{})
		a := next(t, mgr, ondemand.RunnerSession{RunnerID: "r1"})
		require.NoError(t, a.Ack(t.Context()))
		require.NoError(t, mgr.Cancel(t.Context(), job.ID))
		<-a.CancelRequested()
		require.NoError(t, a.Complete(t.Context(), nil, &ondemand.JobError{Message: "interrupted"}))
		got, err := mgr.Get(t.Context(), job.ID)
		require.NoError(t, err)
		require.Equal(t, ondemand.StateCancelled, got.State)
		require.Equal(t, ondemand.ReasonCancelled, got.Error.Reason)
	})
	t.Run("running, runner ignores it", func(t *testing.T) {
		mgr := newManager(t, ondemand.Config{CancelGrace: 50 * time.Millisecond})
		job := submit(t, mgr, ondemand.JobSpec{})
		a := next(t, mgr, ondemand.RunnerSession{RunnerID: "r1"})
		require.NoError(t, a.Ack(t.Context()))
		require.NoError(t, mgr.Cancel(t.Context(), job.ID))
		done, err := mgr.Wait(ctxFor(t), job.ID)
		require.NoError(t, err)
		require.Equal(t, ondemand.StateCancelled, done.State)
		require.Contains(t, done.Error.Message, "did not end the job")
		<-a.Ended()
	})
}

func TestWatchReplaysThenFollows(t *testing.T) {
	mgr := newManager(t, ondemand.Config{})
	job := submit(t, mgr, ondemand.JobSpec{})
	a := next(t, mgr, ondemand.RunnerSession{RunnerID: "r1"})
	require.NoError(t, a.Ack(t.Context()))
	require.NoError(t, a.Output(t.Context(), []ondemand.OutputLine{{Stream: "stdout", Line: "one"}}))

	var events []ondemand.Event
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		for ev, err := range mgr.Watch(ctxFor(t), job.ID) {
			if err != nil {
				return
			}
			events = append(events, ev)
			if ev.Type == ondemand.EventOutput && ev.Line == "one" {
				require.NoError(t, a.Output(t.Context(), []ondemand.OutputLine{{Stream: "stderr", Line: "two"}}))
				require.NoError(t, a.Complete(t.Context(), nil, nil))
			}
		}
	}()
	<-followed

	var types []ondemand.EventType
	for i, ev := range events {
		require.Equal(t, int64(i+1), ev.Seq)
		types = append(types, ev.Type)
	}
	require.Equal(t, []ondemand.EventType{
		ondemand.EventQueued, ondemand.EventAssigned, ondemand.EventRunning,
		ondemand.EventOutput, ondemand.EventOutput, ondemand.EventDone,
	}, types)
	require.Equal(t, "two", events[4].Line)
	require.Equal(t, "stderr", events[4].Stream)
}

func TestSubmitRejectsInvalidSpec(t *testing.T) {
	mgr := newManager(t, ondemand.Config{})
	submit(t, mgr, ondemand.JobSpec{ID: "taken"})
	tests := []struct {
		name string
		spec ondemand.JobSpec
		want error
		text string
	}{
		{"empty kind", ondemand.JobSpec{Target: &ondemand.Target{}}, ondemand.ErrInvalidJob, "Kind is empty"},
		{"duplicate ID", ondemand.JobSpec{ID: "taken", Kind: "k", Target: &ondemand.Target{}}, ondemand.ErrInvalidJob, `"taken" is already used`},
		{"unknown dependency", ondemand.JobSpec{Kind: "k", Target: &ondemand.Target{}, DependsOn: []ondemand.Dependency{{JobID: "nope"}}}, ondemand.ErrInvalidJob, `"nope" is not a known job`},
		{"profile and target", ondemand.JobSpec{Kind: "k", Profile: "p", Target: &ondemand.Target{}}, ondemand.ErrInvalidJob, "both set"},
		{"negative max duration", ondemand.JobSpec{Kind: "k", Target: &ondemand.Target{}, MaxDuration: -time.Second}, ondemand.ErrInvalidJob, "MaxDuration"},
		{"no profiles", ondemand.JobSpec{Kind: "k"}, ondemand.ErrUnknownProfile, "Config.Profiles"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mgr.Submit(t.Context(), tt.spec)
			require.ErrorIs(t, err, tt.want)
			require.ErrorContains(t, err, tt.text)
		})
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  ondemand.Config
		text string
	}{
		{"negative ack timeout", ondemand.Config{AckTimeout: -time.Second}, "Config.AckTimeout"},
		{"interval not below timeout", ondemand.Config{HeartbeatTimeout: time.Second, HeartbeatInterval: 2 * time.Second}, "Config.HeartbeatInterval"},
		{"short token key", ondemand.Config{TokenKey: []byte("short")}, "Config.TokenKey"},
		{"negative launch concurrency", ondemand.Config{LaunchConcurrency: -1}, "Config.LaunchConcurrency"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ondemand.New(t.Context(), tt.cfg)
			require.ErrorContains(t, err, tt.text)
		})
	}
}

func TestRunnerTokens(t *testing.T) {
	mgr := newManager(t, ondemand.Config{TokenKey: []byte("0123456789abcdef0123456789abcdef")})
	other := newManager(t, ondemand.Config{})

	token, err := mgr.IssueRunnerToken("r1", map[string]string{"zone": "eu"}, time.Minute)
	require.NoError(t, err)
	claims, err := mgr.AuthenticateRunner(token)
	require.NoError(t, err)
	require.Equal(t, "r1", claims.RunnerID)
	require.Equal(t, map[string]string{"zone": "eu"}, claims.Labels)

	expired, err := mgr.IssueRunnerToken("r1", nil, time.Nanosecond)
	require.NoError(t, err)
	time.Sleep(time.Millisecond)
	forged, err := other.IssueRunnerToken("r1", nil, time.Minute)
	require.NoError(t, err)
	tampered := token[:len(token)-3] + "AAA"

	for name, bad := range map[string]string{"expired": expired, "forged": forged, "tampered": tampered, "garbage": "abc"} {
		t.Run(name, func(t *testing.T) {
			_, err := mgr.AuthenticateRunner(bad)
			require.ErrorIs(t, err, ondemand.ErrInvalidToken)
			require.NotContains(t, err.Error(), bad)
		})
	}
}

func TestMemoryStoreRollsBackFailedUpdate(t *testing.T) {
	store := ondemand.NewMemoryStore()
	boom := errors.New("boom")
	err := store.Update(t.Context(), func(tx ondemand.Tx) error {
		require.NoError(t, tx.PutJob(&ondemand.Job{ID: "j1"}))
		_, err := tx.Job("j1")
		require.NoError(t, err, "a transaction does not see its own write")
		return boom
	})
	require.ErrorIs(t, err, boom)
	err = store.View(t.Context(), func(tx ondemand.ReadTx) error {
		_, err := tx.Job("j1")
		return err
	})
	require.ErrorIs(t, err, ondemand.ErrNotFound)
}

func TestRevokedTokensRejectedAfterRestart(t *testing.T) {
	store := ondemand.NewMemoryStore()
	key := []byte("0123456789abcdef0123456789abcdef")
	first, err := ondemand.New(t.Context(), ondemand.Config{Store: store, TokenKey: key})
	require.NoError(t, err)
	old, err := first.IssueRunnerToken("static-1", nil, time.Hour)
	require.NoError(t, err)
	other, err := first.IssueRunnerToken("static-2", nil, time.Hour)
	require.NoError(t, err)
	require.NoError(t, first.RevokeRunnerTokens(t.Context(), "static-1"))
	_, err = first.AuthenticateRunner(old)
	require.ErrorIs(t, err, ondemand.ErrTokenRevoked)
	require.ErrorIs(t, err, ondemand.ErrInvalidToken)
	require.NoError(t, first.Close())

	second := newManager(t, ondemand.Config{Store: store, TokenKey: key})
	_, err = second.AuthenticateRunner(old)
	require.ErrorIs(t, err, ondemand.ErrTokenRevoked, "the revocation did not survive the restart")
	_, err = second.AuthenticateRunner(other)
	require.NoError(t, err, "a token of another runner was revoked too")

	time.Sleep(time.Millisecond)
	fresh, err := second.IssueRunnerToken("static-1", nil, time.Hour)
	require.NoError(t, err)
	_, err = second.AuthenticateRunner(fresh)
	require.NoError(t, err, "a token issued after the revocation is rejected")
}

func TestTokenKeyRotation(t *testing.T) {
	oldKey := []byte("old-key-old-key-old-key-old-key-")
	newKey := []byte("new-key-new-key-new-key-new-key-")
	before := newManager(t, ondemand.Config{TokenKey: oldKey})
	token, err := before.IssueRunnerToken("r1", nil, time.Hour)
	require.NoError(t, err)

	rotated := newManager(t, ondemand.Config{TokenKey: newKey, TokenVerifyKeys: [][]byte{oldKey}})
	_, err = rotated.AuthenticateRunner(token)
	require.NoError(t, err, "a token of the previous key is rejected during rotation")
	fresh, err := rotated.IssueRunnerToken("r1", nil, time.Hour)
	require.NoError(t, err)

	retired := newManager(t, ondemand.Config{TokenKey: newKey})
	_, err = retired.AuthenticateRunner(token)
	require.ErrorIs(t, err, ondemand.ErrInvalidToken, "a token of a retired key is accepted")
	require.ErrorContains(t, err, "unknown key")
	_, err = retired.AuthenticateRunner(fresh)
	require.NoError(t, err)
}

func TestConfigPrintsNoSecrets(t *testing.T) {
	cfg := ondemand.Config{
		TokenKey:        []byte("signing-key-signing-key-signing-key"),
		TokenVerifyKeys: [][]byte{[]byte("older-key-older-key-older-key-older")},
		RunnerEnv:       map[string]string{"API_TOKEN": "runner-env-secret"},
	}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("config", "cfg", cfg)
	for _, form := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), logged.String()} {
		require.NotContains(t, form, "signing-key")
		require.NotContains(t, form, "older-key")
		require.NotContains(t, form, "runner-env-secret")
		require.Contains(t, form, "API_TOKEN")
	}
}

func TestTokenWithAlteredSignatureRejected(t *testing.T) {
	mgr := newManager(t, ondemand.Config{})
	token, err := mgr.IssueRunnerToken("r1", nil, time.Minute)
	require.NoError(t, err)
	// Every other last character, including those that differ only in the
	// unused low bits of the final base64 digit.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for _, c := range alphabet {
		if byte(c) == token[len(token)-1] {
			continue
		}
		_, err := mgr.AuthenticateRunner(token[:len(token)-1] + string(c))
		require.ErrorIs(t, err, ondemand.ErrInvalidToken, "last character %q", c)
	}
}
