// The Dawn side of the check that runs llama-kernels in a second WebGPU implementation (Dawn,
// Chrome's, through the `webgpu` package's dawn.node). scripts/dawn-check.sh runs it; the Rust
// side is the hidden `llama-kernels dawn` command (tools/src/cli/dawn.rs).
//
//   node check.mjs modules DIR    every module text of DIR/variants.json through Tint (parse,
//                                 validation, uniformity analysis): errors fail, warnings listed
//   node check.mjs variants DIR   create every variant's pipeline with the adapter's limits and
//                                 features; fail on any pipeline Dawn refuses (on lavapipe LLVM
//                                 compiles each pipeline, about half a second: minutes in all)
//   node check.mjs variants DIR --default
//                                 the same at WebGPU's default limits: fail only on a variant the
//                                 planner picks for such a device (`default_device`), list the
//                                 others (DIR/not-created.txt)
//   node check.mjs variants DIR --over-default
//                                 at the adapter's limits, only the variants a `--default` run
//                                 listed (DIR/not-created.txt) that the planner picks on some
//                                 described device (`picked`)
//   node check.mjs replay DIR     run the captured launches (DIR/trace.json) in order, writing
//                                 each read's bytes to DIR/read-N.bin
//
// `--null` (any mode but replay) uses Dawn's Null backend: Dawn's and Tint's validation of the
// module and of the pipeline with its constants applied, without a driver compile. Its adapter
// has WebGPU's default limits and offers shader-f16 and subgroups.
// Pipelines get explicit layouts from the reflected bindings, as the library builds them.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { create, globals } from 'webgpu';

Object.assign(globalThis, globals);
// dawn.node polls its event queue with setImmediate for as long as an asynchronous call
// (pipeline creation, mapAsync, onSubmittedWorkDone) is pending: a busy loop that keeps a whole
// core from lavapipe's compiles, the real work. Polling every millisecond instead.
const later = setTimeout;
globalThis.setImmediate = (f, ...args) => later(f, 1, ...args);

const [mode, dir, ...flags] = process.argv.slice(2);
const defaults = flags.includes('--default');
// Only the variants an earlier `--default` run listed as needing more than those limits.
const overDefault = flags.includes('--over-default');
const nullBackend = flags.includes('--null');
if (!['modules', 'variants', 'replay'].includes(mode) || !dir || (nullBackend && mode === 'replay')) {
  console.error('usage: node check.mjs modules|variants DIR [--default] [--null] | replay DIR');
  process.exit(2);
}

// Kept alive for the whole run: dawn.node tears the instance down when it is collected.
const gpu = create([...(nullBackend ? ['backend=null'] : []), ...(process.env.DAWN_FLAGS ? process.env.DAWN_FLAGS.split(' ') : [])]);

async function device() {
  const adapter = await gpu.requestAdapter();
  if (!adapter) throw new Error('dawn: no adapter (is Mesa 25 lavapipe on VK_DRIVER_FILES?)');
  // With default limits the features stay on where offered: the planner's picks for a default
  // device need none, and the feature-gated variants that fit those limits are created too.
  const requiredFeatures = ['shader-f16', 'subgroups'].filter((f) => adapter.features.has(f));
  const requiredLimits = {};
  if (!defaults) {
    for (const name in adapter.limits) requiredLimits[name] = adapter.limits[name];
  }
  const dev = await adapter.requestDevice({ requiredFeatures, requiredLimits });
  const errors = [];
  dev.addEventListener('uncapturederror', (e) => errors.push(e.error.message));
  const info = adapter.info;
  console.log(
    `dawn: ${info.vendor} ${info.architecture} ${info.device} ${info.description}; ` +
      `features [${requiredFeatures}]; workgroup memory ${dev.limits.maxComputeWorkgroupStorageSize} B, ` +
      `storage buffers per stage ${dev.limits.maxStorageBuffersPerShaderStage}, ` +
      `storage binding ${dev.limits.maxStorageBufferBindingSize >> 20} MiB, ` +
      `subgroups ${info.subgroupMinSize}..${info.subgroupMaxSize}`,
  );
  return { dev, errors, features: new Set(requiredFeatures) };
}

const BUFFER_TYPE = { uniform: 'uniform', read: 'read-only-storage', read_write: 'storage' };

/// Shader modules by file, with Tint's messages reported once each.
function moduleCache(dev) {
  const modules = new Map();
  const warnings = [];
  return {
    warnings,
    async get(file) {
      if (!modules.has(file)) {
        const module = dev.createShaderModule({ label: file, code: readFileSync(join(dir, file), 'utf8') });
        const info = await module.getCompilationInfo();
        for (const m of info.messages) {
          if (m.type !== 'error') warnings.push(`${file}:${m.lineNum}:${m.linePos}: ${m.type}: ${m.message}`);
        }
        modules.set(file, module);
      }
      return modules.get(file);
    },
  };
}

async function pipeline(dev, modules, v) {
  const layout = dev.createBindGroupLayout({
    entries: v.bindings.map((b) => ({
      binding: b.binding,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type: BUFFER_TYPE[b.access] },
    })),
  });
  const p = await dev.createComputePipelineAsync({
    label: `${v.shader}:${v.entry_point}`,
    layout: dev.createPipelineLayout({ bindGroupLayouts: [layout] }),
    compute: { module: await modules.get(v.module), entryPoint: v.entry_point, constants: v.constants },
  });
  return { p, layout };
}

async function variants() {
  const { dev, errors, features } = await device();
  const modules = moduleCache(dev);
  let all = JSON.parse(readFileSync(join(dir, 'variants.json'), 'utf8'));
  if (overDefault) {
    const over = new Set(readFileSync(join(dir, 'not-created.txt'), 'utf8').split('\n').map((l) => l.split(': ')[0]));
    all = all.filter((v) => over.has(`${v.shader}:${v.entry_point} ${v.key}`));
    const unpicked = all.filter((v) => !v.picked).length;
    all = all.filter((v) => v.picked);
    console.log(`dawn: ${unpicked} of them the planner picks on no described device: not created here (they are with --full)`);
  }
  const failed = [];
  const listed = [];
  let created = 0;
  let skipped = 0;
  // A few at a time: Dawn compiles on its own threads.
  const queue = [...all];
  async function worker() {
    for (let v = queue.shift(); v; v = queue.shift()) {
      if (!v.features.every((f) => features.has(f))) {
        skipped += 1;
        if (v.default_device) failed.push(`${v.shader}:${v.entry_point} ${v.key}: needs [${v.features}]`);
        continue;
      }
      try {
        await pipeline(dev, modules, v);
        created += 1;
      } catch (e) {
        const line = `${v.shader}:${v.entry_point} ${v.key}: ${e.message.split('\n')[0]}`;
        (defaults && !v.default_device ? listed : failed).push(line);
      }
    }
  }
  await Promise.all(Array.from({ length: 8 }, worker));
  for (const w of new Set(modules.warnings)) console.log(`tint: ${w}`);
  if (listed.length) {
    writeFileSync(join(dir, 'not-created.txt'), listed.sort().join('\n') + '\n');
    const reasons = new Map();
    for (const l of listed) {
      const r = l.slice(l.indexOf(': ') + 2).replace(/[0-9]+/g, 'N');
      reasons.set(r, (reasons.get(r) ?? 0) + 1);
    }
    console.log(`dawn: ${listed.length} variants the planner does not pick for such a device are not created (${join(dir, 'not-created.txt')}):`);
    for (const [r, n] of reasons) console.log(`  ${n} x ${r}`);
  }
  for (const l of failed) console.log(`FAIL ${l}`);
  for (const e of errors) console.log(`FAIL device error: ${e}`);
  const needed = all.filter((v) => v.default_device).length;
  console.log(
    `dawn: ${created} of ${all.length} pipelines created` +
      (defaults ? ` at WebGPU's default limits (the planner's picks for such a device: ${needed})` : ' at the adapter limits') +
      (skipped ? `, ${skipped} need a feature this device lacks` : '') +
      `; ${new Set(modules.warnings).size} Tint warnings; ${failed.length + errors.length} failures`,
  );
  return failed.length + errors.length === 0;
}

async function replay() {
  const { dev, errors } = await device();
  const modules = moduleCache(dev);
  const trace = JSON.parse(readFileSync(join(dir, 'trace.json'), 'utf8'));
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const buffers = trace.buffers.map((b) => {
    const buf = dev.createBuffer({ size: Math.ceil(b.size / 4) * 4, usage });
    const bytes = readFileSync(join(dir, b.file));
    dev.queue.writeBuffer(buf, 0, bytes, 0, bytes.length & ~3);
    return buf;
  });
  const dummy = () => dev.createBuffer({ size: 256, usage });
  const pipelines = new Map();
  let encoder = dev.createCommandEncoder();
  const flush = () => {
    dev.queue.submit([encoder.finish()]);
    encoder = dev.createCommandEncoder();
  };
  let dispatches = 0;
  let reads = 0;
  const t0 = performance.now();
  for (const event of trace.events) {
    if (event.dispatch) {
      const d = event.dispatch;
      const id = JSON.stringify([d.module, d.entry_point, d.constants, d.bindings.map((b) => [b.binding, b.access])]);
      if (!pipelines.has(id)) pipelines.set(id, await pipeline(dev, modules, d));
      const { p, layout } = pipelines.get(id);
      const params = new Uint32Array(Math.max(4, Math.ceil(d.params.length / 4) * 4));
      params.set(d.params);
      const entries = d.bindings.map((b) => {
        if (b.params) {
          const buf = dev.createBuffer({ size: params.byteLength, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
          dev.queue.writeBuffer(buf, 0, params);
          return { binding: b.binding, resource: { buffer: buf } };
        }
        if (b.dummy) return { binding: b.binding, resource: { buffer: dummy() } };
        return { binding: b.binding, resource: { buffer: buffers[b.buffer], offset: b.offset, size: b.size } };
      });
      const pass = encoder.beginComputePass({ label: d.entry_point });
      pass.setPipeline(p);
      pass.setBindGroup(0, dev.createBindGroup({ layout, entries }));
      pass.dispatchWorkgroups(...d.grid);
      pass.end();
      dispatches += 1;
    } else if (event.write) {
      const w = event.write;
      flush();
      dev.queue.writeBuffer(buffers[w.buffer], w.offset, readFileSync(join(dir, w.file)));
    } else if (event.read) {
      const r = event.read;
      const start = Math.floor(r.offset / 4) * 4;
      const end = Math.ceil((r.offset + r.size) / 4) * 4;
      const staging = dev.createBuffer({ size: Math.max(4, end - start), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      if (end > start) encoder.copyBufferToBuffer(buffers[r.buffer], start, staging, 0, end - start);
      flush();
      await staging.mapAsync(GPUMapMode.READ);
      const bytes = new Uint8Array(staging.getMappedRange()).slice(r.offset - start, r.offset - start + r.size);
      staging.unmap();
      writeFileSync(join(dir, `read-${r.n}.bin`), bytes);
      reads += 1;
      if (process.env.DAWN_VERBOSE) console.log(`read ${r.n} after ${dispatches} dispatches, ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }
  }
  flush();
  await dev.queue.onSubmittedWorkDone();
  for (const w of new Set(modules.warnings)) console.log(`tint: ${w}`);
  for (const e of errors) console.log(`FAIL device error: ${e}`);
  console.log(`dawn: replayed ${dispatches} dispatches (${pipelines.size} pipelines), ${reads} reads; ${errors.length} device errors`);
  return errors.length === 0;
}

async function modules() {
  const { dev, errors } = await device();
  const all = JSON.parse(readFileSync(join(dir, 'variants.json'), 'utf8'));
  const files = [...new Set(all.map((v) => v.module))];
  const failed = [];
  const warnings = [];
  for (const file of files) {
    const module = dev.createShaderModule({ label: file, code: readFileSync(join(dir, file), 'utf8') });
    for (const m of (await module.getCompilationInfo()).messages) {
      const line = `${file}:${m.lineNum}:${m.linePos}: ${m.type}: ${m.message}`;
      (m.type === 'error' ? failed : warnings).push(line);
    }
  }
  for (const w of warnings) console.log(`tint: ${w}`);
  for (const l of failed) console.log(`FAIL ${l}`);
  for (const e of errors) console.log(`FAIL device error: ${e}`);
  console.log(`dawn: ${files.length} module texts through Tint; ${warnings.length} warnings; ${failed.length + errors.length} errors`);
  return failed.length + errors.length === 0;
}

const ok = await { modules, variants, replay }[mode]();
process.exit(ok ? 0 : 1);
