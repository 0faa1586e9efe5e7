/** One measured quantity, summarised the way every bench result file reports it. */
export interface Metric {
  unit: string;
  p50: number;
  p95: number;
  n: number;
  min?: number;
  max?: number;
}

/** Nearest-rank percentile of a non-empty sample. */
export function percentile(samples: readonly number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

export function summarize(samples: readonly number[], unit = "ms"): Metric {
  if (samples.length === 0) throw new Error("no samples");
  const round = (x: number) => Math.round(x * 10) / 10;
  return {
    unit,
    p50: round(percentile(samples, 50)),
    p95: round(percentile(samples, 95)),
    n: samples.length,
    min: round(Math.min(...samples)),
    max: round(Math.max(...samples)),
  };
}
