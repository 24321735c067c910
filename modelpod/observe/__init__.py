"""What the server records: metrics, statistics, recent activity, timings and logs."""
