"""What a run records: results.json, metrics.csv across resumes, adapters, resources."""
