import { bootToMarker, chooseAccelerator, ensureGuestImage, Vm } from "@codecourier/engine";
import { summarize } from "../stats.js";
import { benchHost, type SuiteResult } from "../report.js";

/** Execs after the first that only warm TCG's translation of the exec path, then the measured ones. */
const WARMUP_EXECS_PER_VM = 5;
const WARM_EXECS_PER_VM = 10;

/**
 * Cold boot (spawn → agent ready), exec round trip of `true`, and the raw floor (bare QEMU, same kernel,
 * busybox-only initramfs, to first serial output), interleaved run by run so both see the same machine load.
 */
export async function bootSuite(runs: number, log: (line: string) => void): Promise<SuiteResult> {
  const image = await ensureGuestImage(log);
  const { accel, reason } = await chooseAccelerator(image);
  log(`accelerator: ${accel} (${reason})`);

  const coldBoot: number[] = [];
  const floor: number[] = [];
  const firstExec: number[] = [];
  const execRtt: number[] = [];
  const kernelToInit: number[] = [];
  const initramfsStage: number[] = [];
  const kernelToAgentStart: number[] = [];
  const agentStartToServing: number[] = [];

  for (let run = 1; run <= runs; run++) {
    const floorBoot = await bootToMarker(image, accel, 60_000);
    if (!floorBoot.ok) throw new Error(`floor boot ${run} did not reach userspace:\n${floorBoot.console.slice(-2000)}`);
    floor.push(floorBoot.ms);

    const started = performance.now();
    const vm = await Vm.boot({ image, accel });
    coldBoot.push(performance.now() - started);
    try {
      let t = performance.now();
      await vm.agent.run({ argv: ["true"] });
      firstExec.push(performance.now() - t);
      for (let i = 0; i < WARMUP_EXECS_PER_VM; i++) await vm.agent.run({ argv: ["true"] });
      for (let i = 0; i < WARM_EXECS_PER_VM; i++) {
        t = performance.now();
        const result = await vm.agent.run({ argv: ["true"] });
        execRtt.push(performance.now() - t);
        if (result.exitCode !== 0) throw new Error(`true exited ${result.exitCode}`);
      }
      const { timeline } = await vm.agent.health();
      const marks = kernelLogMarks((await vm.agent.run({ argv: ["dmesg"] })).stdout.toString());
      if (marks.initMs !== undefined && marks.rootMountedMs !== undefined) {
        kernelToInit.push(marks.initMs);
        initramfsStage.push(marks.rootMountedMs - marks.initMs);
      }
      kernelToAgentStart.push(timeline.processStartMs);
      agentStartToServing.push(timeline.servingMs - timeline.processStartMs);
    } finally {
      await vm.stop();
    }
    log(`run ${run}/${runs}: floor ${floor.at(-1)!.toFixed(0)} ms, cold boot ${coldBoot.at(-1)!.toFixed(0)} ms`);
  }

  const metrics = {
    coldBootMs: summarize(coldBoot),
    execRttMs: summarize(execRtt),
    floorColdBootMs: summarize(floor),
    firstExecMs: summarize(firstExec),
    guestKernelToInitMs: summarize(kernelToInit),
    guestInitramfsMs: summarize(initramfsStage),
    guestKernelToAgentStartMs: summarize(kernelToAgentStart),
    guestAgentStartToServingMs: summarize(agentStartToServing),
  };
  return {
    suite: "boot",
    accel,
    runs,
    host: await benchHost(),
    metrics,
    ratios: { coldBootVsFloor: metrics.coldBootMs.p50 / metrics.floorColdBootMs.p50 },
    notes: [
      `execRttMs: ${WARM_EXECS_PER_VM} execs of \`true\` (/usr/bin/true, dynamically linked) per VM, after the first ` +
        `(firstExecMs) and ${WARMUP_EXECS_PER_VM} unmeasured warm-up execs`,
      "guest* metrics are guest-kernel uptime from the kernel log and the agent's health timeline: kernel → /init, " +
        "initramfs (modules + mounts), kernel → agent process start, agent start → serving",
    ],
  };
}

/** Timestamps (ms of guest uptime) of "Run /init" and of the root disk's ext4 mount in the kernel log. */
function kernelLogMarks(dmesg: string): { initMs?: number; rootMountedMs?: number } {
  const at = (pattern: RegExp) => {
    const line = dmesg.split("\n").find((l) => pattern.test(l));
    const match = line && /^\[\s*([\d.]+)\]/.exec(line);
    return match ? Number(match[1]) * 1000 : undefined;
  };
  return { initMs: at(/Run \/init/), rootMountedMs: at(/EXT4-fs \(vd.\): mounted filesystem with ordered data/) };
}
