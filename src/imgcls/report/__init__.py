"""Reports: metrics to JSON/CSV, plots (PNG, matplotlib's Agg backend) and the HTML report."""
