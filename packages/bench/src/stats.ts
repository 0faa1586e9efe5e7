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

/** p50, p95, min and max of the samples, rounded to `decimals` places (default one). */
export function summarize(samples: readonly number[], unit = "ms", decimals = 1): Metric {
  if (samples.length === 0) throw new Error("no samples");
  const scale = 10 ** decimals;
  const round = (x: number) => Math.round(x * scale) / scale;
  return {
    unit,
    p50: round(percentile(samples, 50)),
    p95: round(percentile(samples, 95)),
    n: samples.length,
    min: round(Math.min(...samples)),
    max: round(Math.max(...samples)),
  };
}

/** A quantity measured once over a whole phase (a rate, a count): p50 = p95 = the value; n counts what it covers. */
export function single(value: number, unit: string, n: number, decimals = 1): Metric {
  const scale = 10 ** decimals;
  const v = Math.round(value * scale) / scale;
  return { unit, p50: v, p95: v, n };
}
