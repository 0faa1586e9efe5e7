import { writeFile } from "node:fs/promises";
import { runTool } from "../util/run-tool.js";

/** Packs the given paths (relative to stageDir, in this order) into a newc archive owned by root, reproducibly. */
export async function writeNewcArchive(stageDir: string, paths: readonly string[], outFile: string): Promise<void> {
  const archive = await runTool("cpio", ["-o", "-H", "newc", "-R", "0:0", "--reproducible", "--quiet"], {
    cwd: stageDir,
    input: paths.join("\n") + "\n",
  });
  await writeFile(outFile, archive);
}
