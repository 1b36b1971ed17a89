"""Weekly report: publishing rules, charts and captions."""
