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

# pare_train RUN_DIR [key=value ...]: train into RUN_DIR (resuming from its newest complete
# checkpoint), on every node of the job, one task per node. On USR1 (sbatch --signal=B:USR1@T,
# sent before the time limit or on preemption) or TERM, the batch shell touches RUN_DIR/STOP:
# every rank stops at the next step, saves and exits 0. Then, unless RUN_DIR/DONE exists, the job
# requeues itself (at most MAX_REQUEUES times). Returns the trainer's exit status otherwise.
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
    echo "$(date -Is) job $(pare_job_id) restart ${SLURM_RESTART_COUNT:-0}: ${PARE_NODES} node(s)," \
        "${PARE_PROCESSES} process(es), head ${PARE_HEAD}:${PARE_PORT}, run ${run_dir}"

    trap 'echo "$(date -Is) signal received: asking the trainer to stop"; touch "$PARE_RUN_DIR/STOP"' USR1 TERM
    # Single quotes: $SLURM_NODEID must expand on each node, inside its own task.
    # shellcheck disable=SC2016
    srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
        exec "$PARE_ACCELERATE" launch $PARE_MULTI \
            --num_machines "$PARE_NODES" --machine_rank "$SLURM_NODEID" \
            --num_processes "$PARE_PROCESSES" \
            --main_process_ip "$PARE_HEAD" --main_process_port "$PARE_PORT" \
            --mixed_precision "$PARE_MIXED_PRECISION" --dynamo_backend no \
            train/train.py "$@"' pare_train "$@" train.output_dir="$run_dir" train.resume=auto &
    local srun_pid=$! status=0
    # A trapped signal interrupts `wait`; keep waiting until srun itself has ended.
    while true; do
        status=0
        wait "$srun_pid" || status=$?
        kill -0 "$srun_pid" 2>/dev/null || break
    done
    trap - USR1 TERM

    if [[ -f "$run_dir/DONE" ]]; then
        echo "$(date -Is) run complete: $run_dir/DONE"
        return 0
    fi
    if [[ "$status" -ne 0 ]]; then
        echo "$(date -Is) the trainer failed (exit $status); not requeueing" >&2
        return "$status"
    fi
    if [[ "${SLURM_RESTART_COUNT:-0}" -ge "${MAX_REQUEUES:-20}" ]]; then
        echo "$(date -Is) stopped, but already requeued ${SLURM_RESTART_COUNT} times; giving up" >&2
        return 1
    fi
    echo "$(date -Is) stopped before the end: requeueing $(pare_job_id)"
    scontrol requeue "$(pare_job_id)"
}
