# shellcheck shell=bash
# Shared by the job scripts in slurm/: where the head node is, a per-job port, and one
# `accelerate launch` per node with the preemption signal turned into the trainer's STOP file.
# Sourced, not run. Settings come from the environment (see README "Running on a cluster").

# The project's environment: an activated one is kept (sbatch passes the submitting shell's
# environment on), else the checkout's .venv if there is one.
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    source .venv/bin/activate
fi

# The first node of the allocation, as an address the other nodes can reach. NodeAddr is what
# slurmd registered; on real clusters it is the host name or its IP, on test clusters with
# several slurmd on one host the node names themselves do not resolve.
pare_head_address() {
    local head
    head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
    scontrol show node "$head" | tr ' ' '\n' | sed -n 's/^NodeAddr=//p' | head -n1
}

# A port per job, so two jobs sharing a node do not collide.
pare_port() {
    echo $((20000 + SLURM_JOB_ID % 20000))
}

# The id to requeue: an array task is requeued as ARRAYJOB_TASK.
pare_job_id() {
    if [[ -n "${SLURM_ARRAY_JOB_ID:-}" ]]; then
        echo "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    else
        echo "$SLURM_JOB_ID"
    fi
}

# pare_wait PID: wait until PID has ended, also when trapped signals interrupt `wait`; its exit
# status (an interrupted `wait` returns 128+N while the process runs on; bash keeps the status
# of an ended background process for a later `wait`).
pare_wait() {
    while kill -0 "$1" 2>/dev/null; do
        wait "$1"
    done
    wait "$1"
}

# pare_stop_requested SIGNAL WHO [MARKER]: what a trapped signal does, in the batch shell and in
# each node's task: the trainer's ranks see RUN_DIR/STOP at the next step, save and exit 0. A
# task also leaves RUN_DIR/MARKER (STOP.node-N), read when the job decides to requeue.
pare_stop_requested() {
    echo "$(date -Is) $1 to $2: asking the trainer to stop"
    touch "$PARE_RUN_DIR/STOP"
    if [[ -n "${3:-}" ]]; then touch "$PARE_RUN_DIR/$3"; fi
}
export -f pare_wait pare_stop_requested

# pare_train RUN_DIR [key=value ...]: train into RUN_DIR (resuming from its newest complete
# checkpoint), on every node of the job, one task per node. A signal asks the trainer to stop
# (RUN_DIR/STOP): USR1 or TERM to the batch shell (sbatch --signal=B:USR1@T before the time
# limit; scancel --batch or --full), TERM to the job steps (preemption with GraceTime, scancel
# --signal=TERM). Then, unless RUN_DIR/DONE exists, the job requeues itself when the run folder
# says it stopped rather than crashed (pare.checkpoint.requeue_decision; MAX_REQUEUES, default
# 20). Returns 0 when DONE exists or the job was requeued, else the trainer's exit status.
pare_train() {
    local run_dir=$1
    shift
    local nodes=${SLURM_NNODES:-1}
    local gpus=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}
    local per_node
    if [[ "$gpus" -gt 0 ]]; then
        per_node=$gpus
        export PARE_MIXED_PRECISION=${MIXED_PRECISION:-bf16}
    else
        # CPU nodes (tests, CPU clusters): gloo, PROCS_PER_NODE processes per node.
        per_node=${PROCS_PER_NODE:-1}
        export ACCELERATE_USE_CPU=1 PARE_MIXED_PRECISION=${MIXED_PRECISION:-no}
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    fi
    export PARE_NODES=$nodes PARE_PROCESSES=$((nodes * per_node))
    PARE_HEAD=$(pare_head_address)
    PARE_PORT=$(pare_port)
    export PARE_HEAD PARE_PORT PARE_RUN_DIR=$run_dir
    export PARE_ACCELERATE=${ACCELERATE:-accelerate}
    local multi=""
    [[ "$PARE_PROCESSES" -gt 1 ]] && multi="--multi_gpu"
    export PARE_MULTI=$multi
    mkdir -p "$run_dir"
    # What an earlier attempt's stop left (the trainer removes STOP too, once it runs).
    rm -f "$run_dir/STOP" "$run_dir"/STOP.node-*
    local started_from
    started_from=$(python -m pare.checkpoint newest "$run_dir")
    echo "$(date -Is) job $(pare_job_id) restart ${SLURM_RESTART_COUNT:-0}: ${PARE_NODES} node(s)," \
        "${PARE_PROCESSES} process(es), head ${PARE_HEAD}:${PARE_PORT}, run ${run_dir}," \
        "newest complete checkpoint: ${started_from}"

    # Kept until the end: a second signal must not kill the shell before it has requeued.
    PARE_SIGNALLED=""
    trap 'PARE_SIGNALLED=1; pare_stop_requested USR1 "the batch shell"' USR1
    trap 'PARE_SIGNALLED=1; pare_stop_requested TERM "the batch shell"' TERM
    # Each node's task waits for its launcher rather than exec'ing it: a TERM to the job steps
    # reaches the launcher and the trainer's ranks directly, and the launcher then exits non-zero;
    # the task's trap leaves STOP.node-N behind, which says it was a stop when every node has
    # one. TERM to srun itself (--full) makes it SIGKILL its tasks at once: the run folder keeps
    # its newest complete checkpoint.
    # Single quotes: $SLURM_NODEID must expand on each node, inside its own task.
    # shellcheck disable=SC2016
    srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
        trap "pare_stop_requested TERM \"the task on node \$SLURM_NODEID\" \
            STOP.node-\$SLURM_NODEID" TERM
        "$PARE_ACCELERATE" launch $PARE_MULTI \
            --num_machines "$PARE_NODES" --machine_rank "$SLURM_NODEID" \
            --num_processes "$PARE_PROCESSES" \
            --main_process_ip "$PARE_HEAD" --main_process_port "$PARE_PORT" \
            --mixed_precision "$PARE_MIXED_PRECISION" --dynamo_backend no \
            train/train.py "$@" &
        pare_wait $!' pare_train "$@" train.output_dir="$run_dir" train.resume=auto &
    local status=0
    pare_wait $! || status=$?

    local decision refused=0 result=0
    if [[ -f "$run_dir/DONE" ]]; then
        echo "$(date -Is) run complete: $run_dir/DONE"
    else
        # COMPLETING, not RUNNING, once the job was cancelled or ran out of time.
        local job_state
        job_state=$(scontrol show job -o "$SLURM_JOB_ID" | sed -n 's/.* JobState=\([A-Z_]*\) .*/\1/p')
        decision=$(python -m pare.checkpoint requeue "$run_dir" --status "$status" \
            ${PARE_SIGNALLED:+--signalled} --nodes "$PARE_NODES" --started-from "$started_from" \
            --job-state "${job_state:-RUNNING}" --restarts "${SLURM_RESTART_COUNT:-0}" \
            --max-requeues "${MAX_REQUEUES:-20}") || refused=$?
        if [[ "$refused" -eq 0 ]]; then
            echo "$(date -Is) requeueing $(pare_job_id): $decision"
            scontrol requeue "$(pare_job_id)" || result=$?
        else
            echo "$(date -Is) $decision" >&2
            result=$((status == 0 ? 1 : status))
        fi
        rm -f "$run_dir"/STOP.node-*
    fi
    trap - USR1 TERM
    return "$result"
}
