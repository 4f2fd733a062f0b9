package ondemand

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// metrics are the Manager's OpenTelemetry instruments.
type metrics struct {
	jobsDone       metric.Int64Counter
	orphansStopped metric.Int64Counter
	orphansLeft    metric.Int64Counter
	launchLatency  metric.Float64Histogram
	registration   metric.Registration
}

// Metric names, all prefixed with "odrkit.".
const (
	metricJobsDone       = "odrkit.jobs.done"
	metricOrphansStopped = "odrkit.tasks.orphans_stopped"
	metricOrphansLeft    = "odrkit.tasks.orphans_left"
	metricLaunchLatency  = "odrkit.launch.latency"
	metricHeldJobs       = "odrkit.holding_set.size"
	metricQueuedJobs     = "odrkit.jobs.queued"
)

func newMetrics(provider metric.MeterProvider, m *Manager) (*metrics, error) {
	meter := provider.Meter("github.com/odrkit/odrkit/ondemand")
	var x metrics
	var err error
	if x.jobsDone, err = meter.Int64Counter(metricJobsDone, metric.WithDescription("Jobs that reached a terminal state, by state, reason and role.")); err != nil {
		return nil, err
	}
	if x.orphansStopped, err = meter.Int64Counter(metricOrphansStopped, metric.WithDescription("Platform resources that no task owned and that reconciliation stopped.")); err != nil {
		return nil, err
	}
	if x.orphansLeft, err = meter.Int64Counter(metricOrphansLeft, metric.WithDescription("Tasks whose stop job failed after its retries, so their resource may be left behind.")); err != nil {
		return nil, err
	}
	if x.launchLatency, err = meter.Float64Histogram(metricLaunchLatency, metric.WithUnit("s"), metric.WithDescription("Time from a start job's assignment to its runner taking the job.")); err != nil {
		return nil, err
	}
	held, err := meter.Int64ObservableGauge(metricHeldJobs, metric.WithDescription("Jobs in the holding set: ready and waiting for one runner ID."))
	if err != nil {
		return nil, err
	}
	queued, err := meter.Int64ObservableGauge(metricQueuedJobs, metric.WithDescription("Jobs in state QUEUED, including blocked and held jobs."))
	if err != nil {
		return nil, err
	}
	x.registration, err = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		heldCount, queuedCount := m.queueSizes()
		o.ObserveInt64(held, int64(heldCount))
		o.ObserveInt64(queued, int64(queuedCount))
		return nil
	}, held, queued)
	if err != nil {
		return nil, err
	}
	return &x, nil
}

func (x *metrics) jobDone(j *Job) {
	attrs := []attribute.KeyValue{attribute.String("state", string(j.State)), attribute.String("role", string(j.Role))}
	if j.Error != nil {
		attrs = append(attrs, attribute.String("reason", string(j.Error.Reason)))
	}
	x.jobsDone.Add(context.Background(), 1, metric.WithAttributes(attrs...))
}

// queueSizes returns the size of the holding set and the number of
// QUEUED jobs.
func (m *Manager) queueSizes() (held, queued int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.queue.byRunner {
		held += l.Len()
	}
	return held, m.queuedCount
}
