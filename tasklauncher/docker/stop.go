package docker

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/odrkit/odrkit/tasklauncher"
)

// StopTask stops the container that state names and removes it with its
// anonymous volumes. The engine sends SIGTERM and, after stop_timeout,
// SIGKILL. With debug_containers the container is stopped but kept.
//
// It returns nil when the state is empty or the container no longer
// exists, so it can be called again and after an operator removed the
// container.
func (l *Launcher) StopTask(ctx context.Context, state []byte) error {
	st, err := decodeState(state)
	if err != nil {
		return fmt.Errorf("stop task: %w", err)
	}
	if st == nil {
		return nil
	}
	if err := l.checkOpen(); err != nil {
		return fmt.Errorf("stop task %s: %w", st.TaskID, err)
	}
	log := l.logger.With("task_id", st.TaskID, "runner_id", st.RunnerID, "container_id", st.ContainerID)

	timeout := l.stopTimeout
	_, err = l.client.ContainerStop(ctx, st.ContainerID, client.ContainerStopOptions{Timeout: &timeout})
	switch {
	case cerrdefs.IsNotFound(err):
		log.Debug("container is already gone")
		return nil
	case err != nil:
		return fmt.Errorf("stop task %s: stop container %s: %w", st.TaskID, st.ContainerID, l.engineError(ctxErr(ctx, err)))
	}
	if l.cfg.DebugContainers {
		log.Info("stopped task; kept its container because debug_containers is set")
		return nil
	}
	if err := l.removeContainer(ctx, st.ContainerID); err != nil {
		return fmt.Errorf("stop task %s: %w", st.TaskID, ctxErr(ctx, err))
	}
	log.Info("stopped task")
	return nil
}

// ListTasks returns the containers of this launcher, running or not, whose
// labels include all of labels. Only containers labelled odrkit.launcher=docker
// are considered. The states it returns carry no task or runner ID.
func (l *Launcher) ListTasks(ctx context.Context, labels map[string]string) ([]tasklauncher.TaskInfo, error) {
	if err := l.checkOpen(); err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	filters := client.Filters{}.Add("label", LabelLauncher+"="+PluginName)
	for _, key := range slices.Sorted(maps.Keys(labels)) {
		filters.Add("label", key+"="+labels[key])
	}
	res, err := l.client.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: filters})
	if err != nil {
		return nil, fmt.Errorf("list tasks: list containers: %w", l.engineError(ctxErr(ctx, err)))
	}

	tasks := make([]tasklauncher.TaskInfo, 0, len(res.Items))
	for _, c := range res.Items {
		// The engine's label filter matches "key=value" exactly, but a
		// check here keeps the promise even for an engine that does not.
		if !containsLabels(c.Labels, labels) {
			continue
		}
		st := taskState{ContainerID: c.ID}
		if len(c.Names) > 0 {
			st.Name = strings.TrimPrefix(c.Names[0], "/")
		}
		tasks = append(tasks, tasklauncher.TaskInfo{
			State:   st.encode(),
			Labels:  maps.Clone(c.Labels),
			Running: c.State == "running",
		})
	}
	return tasks, nil
}

func containsLabels(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}
