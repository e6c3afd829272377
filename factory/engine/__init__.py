"""The only place that knows Ray: starting or joining it, turning stages into Ray Data operators,
placing them on the cluster's CPUs and GPUs, and the Ray Data parts of the pre-pass and selection."""
