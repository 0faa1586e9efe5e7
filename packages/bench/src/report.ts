import { mkdir, writeFile } from "node:fs/promises";
import { cpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { qemuVersion } from "@codecourier/engine";
import type { Metric } from "./stats.js";

export interface SuiteResult {
  suite: string;
  accel: string;
  runs: number;
  host: { cpus: number; node: string; qemu: string };
  metrics: Record<string, Metric>;
  /** Ratios of a metric to the raw floor measured in the same run (p50 / floor p50). */
  ratios: Record<string, number>;
  notes: string[];
}

export const RESULTS_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "bench", "results");

/** Writes bench/results/<suite>.json and prints a markdown table on stdout. */
export async function report(result: SuiteResult): Promise<string> {
  await mkdir(RESULTS_DIR, { recursive: true });
  const file = join(RESULTS_DIR, `${result.suite}.json`);
  await writeFile(file, JSON.stringify(result, null, 2) + "\n");
  const lines = [
    `### ${result.suite} — accelerator: ${result.accel}, ${result.runs} runs, ${result.host.cpus} CPUs, ${result.host.qemu}`,
    "",
    "| metric | unit | p50 | p95 | min | max | n |",
    "|---|---|---:|---:|---:|---:|---:|",
    ...Object.entries(result.metrics).map(
      ([name, m]) => `| ${name} | ${m.unit} | ${m.p50} | ${m.p95} | ${m.min ?? ""} | ${m.max ?? ""} | ${m.n} |`,
    ),
    "",
    ...Object.entries(result.ratios).map(([name, r]) => `- ${name}: ${r.toFixed(2)}×`),
    ...result.notes.map((n) => `- ${n}`),
    "",
    `JSON: ${file}`,
  ];
  const text = lines.join("\n");
  console.log(text);
  return file;
}

/** The machine a suite ran on, as every result records it. */
export async function benchHost(): Promise<SuiteResult["host"]> {
  return { cpus: cpus().length, node: process.version, qemu: await qemuVersion() };
}
