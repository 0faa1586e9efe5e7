import { runTool } from "../util/run-tool.js";

/** Size of a directory tree in bytes (apparent sizes, as du reports them). */
async function treeBytes(dir: string): Promise<number> {
  const out = (await runTool("du", ["-sb", dir])).toString();
  return Number(out.split(/\s/)[0]);
}

/**
 * Makes an ext4 image from a directory without loop mounts (`mkfs.ext4 -d`), so it needs no privileges beyond
 * reading the tree. The image is sparse; `minBytes` leaves room for writes on a root disk.
 */
export async function makeExt4Image(opts: {
  sourceDir: string;
  outFile: string;
  label: string;
  journal: boolean;
  minBytes?: number;
}): Promise<void> {
  const content = await treeBytes(opts.sourceDir);
  const bytes = Math.max(opts.minBytes ?? 0, Math.ceil((content * 1.3 + 64 * 1024 * 1024) / 1048576) * 1048576);
  const features = opts.journal ? [] : ["-O", "^has_journal"];
  await runTool("mkfs.ext4", [
    "-q",
    "-F",
    "-L",
    opts.label,
    "-b",
    "4096",
    "-E",
    "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
    ...features,
    "-d",
    opts.sourceDir,
    opts.outFile,
    `${Math.ceil(bytes / 1024)}k`,
  ]);
}
