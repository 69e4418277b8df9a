"""On-chain side shared by the SDK, host worker, deploy scripts and benchmarks."""
