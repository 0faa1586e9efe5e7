/** Prints rows as left-aligned columns under an upper-case header, separated by two spaces (awk-friendly). */
export function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => (row[i] ?? "").length)));
  for (const row of [header, ...rows]) {
    console.log(row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join("  "));
  }
}

/** An ISO time without its milliseconds: 2025-01-02T03:04:05Z. */
export function shortTime(iso: string): string {
  return iso.replace(/\.\d+Z$/, "Z");
}

export function printJson(value: unknown): void {
  console.log(JSON.stringify(value, null, 2));
}
