#!/usr/bin/env node
// Call the edgemill device agent from Node.js: ListModels, then one Predict with a float32 input.
//
//   node predict.js ADDRESS MODEL INPUT SHAPE [VALUES]
//   node predict.js 127.0.0.1:8601 mlp features 1,64
//   node predict.js unix:/run/edgemill/agent.sock mlp features 1,64 0.5        (every element 0.5)
//   node predict.js 127.0.0.1:8601 mlp features 1,4 0.1,0.2,0.3,0.4            (one value per element)
//
// Without VALUES the input is a ramp: element i of n is i / n. The .proto is read at run time with
// @grpc/proto-loader (no generated code); EDGEMILL_PROTO points at another copy of agent.proto.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = process.env.EDGEMILL_PROTO
  || path.join(__dirname, '..', '..', '..', 'proto', 'edgemill', 'v1', 'agent.proto');

if (!fs.existsSync(PROTO)) {
  console.error(`predict.js: ${PROTO} not found; set EDGEMILL_PROTO to edgemill's proto/edgemill/v1/agent.proto`);
  process.exit(2);
}
// keepCase: fields keep their .proto names (package_path, compute_us); longs: Number is exact for
// shapes and microsecond timings (< 2^53); enums: String gives 'FLOAT32' instead of 1.
const definition = protoLoader.loadSync(PROTO, {
  keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
});
const edgemill = grpc.loadPackageDefinition(definition).edgemill.v1;

// Tensor bytes are C-order little-endian; DataView reads and writes them regardless of the host's
// byte order and of the Buffer's alignment (a Buffer from the wire may start at any offset).
const DECODERS = {
  FLOAT32: [4, (v, o) => v.getFloat32(o, true)],
  FLOAT64: [8, (v, o) => v.getFloat64(o, true)],
  INT8: [1, (v, o) => v.getInt8(o)],
  UINT8: [1, (v, o) => v.getUint8(o)],
  INT16: [2, (v, o) => v.getInt16(o, true)],
  UINT16: [2, (v, o) => v.getUint16(o, true)],
  INT32: [4, (v, o) => v.getInt32(o, true)],
  UINT32: [4, (v, o) => v.getUint32(o, true)],
  INT64: [8, (v, o) => v.getBigInt64(o, true)],
  UINT64: [8, (v, o) => v.getBigUint64(o, true)],
  BOOL: [1, (v, o) => v.getUint8(o) !== 0],
};

function usage(message) {
  if (message) console.error(`predict.js: ${message}`);
  console.error('usage: node predict.js ADDRESS MODEL INPUT SHAPE [VALUES]\n'
    + '  e.g. node predict.js 127.0.0.1:8601 mlp features 1,64');
  process.exit(2);
}

function parseShape(text) {
  const shape = text.split(',').map((d) => Number(d.trim()));
  if (!shape.length || shape.some((d) => !Number.isInteger(d) || d < 0)) {
    usage(`bad shape '${text}': write non-negative integers separated by commas, e.g. 1,64`);
  }
  return shape;
}

function makeInput(count, valuesText) {
  const data = new Float32Array(count);
  if (valuesText === undefined) {
    for (let i = 0; i < count; i += 1) data[i] = i / count;
    return data;
  }
  const values = valuesText.split(',').map(Number);
  if (values.some(Number.isNaN) || (values.length !== 1 && values.length !== count)) {
    usage(`VALUES must be one number or ${count} comma-separated numbers`);
  }
  for (let i = 0; i < count; i += 1) data[i] = values.length === 1 ? values[0] : values[i];
  return data;
}

function encodeFloat32(data) {
  const buffer = Buffer.alloc(data.length * 4);
  data.forEach((x, i) => buffer.writeFloatLE(x, i * 4));
  return buffer;
}

// A Float32Array (FLOAT32) or a plain array (other dtypes) from a Tensor message.
function decodeTensor(tensor) {
  if (tensor.data !== 'raw') {
    return `<in shared memory ${tensor.shared_memory.name}>`;
  }
  const decoder = DECODERS[tensor.dtype];
  if (!decoder) return `<${tensor.raw.length} bytes of ${tensor.dtype}>`;
  const [size, read] = decoder;
  const view = new DataView(tensor.raw.buffer, tensor.raw.byteOffset, tensor.raw.byteLength);
  const count = tensor.raw.byteLength / size;
  const values = tensor.dtype === 'FLOAT32' ? new Float32Array(count) : new Array(count);
  for (let i = 0; i < count; i += 1) values[i] = read(view, i * size);
  return values;
}

// Unary calls as promises, each with a deadline so a stuck network fails instead of hanging.
function call(client, method, request, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutMs);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

function statusName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) || String(code);
}

function specText(spec) {
  return `${spec.name}: ${spec.dtype}[${spec.shape.join(', ')}]`;
}

async function main() {
  const [address, modelName, inputName, shapeText, valuesText] = process.argv.slice(2);
  if (!shapeText) usage();
  const shape = parseShape(shapeText);
  const input = makeInput(shape.reduce((a, b) => a * b, 1), valuesText);

  // Plain TCP; for a TLS listener use grpc.credentials.createSsl(ca, key, cert) instead.
  const client = new edgemill.Agent(address, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': 64 * 1024 * 1024, // the agent's default max_message_mb
    'grpc.max_send_message_length': 64 * 1024 * 1024,
  });
  try {
    const listing = await call(client, 'ListModels', {});
    const mb = (bytes) => (bytes / 1048576).toFixed(1);
    console.log(`models loaded: ${listing.models.length} `
      + `(memory ${mb(listing.memory_used_bytes)} of ${mb(listing.memory_budget_bytes)} MiB)`);
    for (const m of listing.models) {
      console.log(`  ${m.name} ${m.version}  ${m.backend}/${m.precision}  `
        + `in ${m.inputs.map(specText).join(', ')}  out ${m.outputs.map(specText).join(', ')}`);
    }

    const reply = await call(client, 'Predict', {
      model: modelName,
      inputs: [{ name: inputName, dtype: 'FLOAT32', shape, raw: encodeFloat32(input) }],
    });
    console.log(`model ${modelName} version ${reply.model_version}`);
    for (const tensor of reply.outputs) {
      const values = decodeTensor(tensor);
      console.log(`output ${tensor.name}: ${tensor.dtype}[${tensor.shape.join(', ')}]`);
      if (values instanceof Float32Array) {
        console.log(`  [${Array.from(values, (v) => v.toPrecision(7)).join(', ')}]`);
      } else {
        console.log(values);
      }
    }
    const t = reply.timing;
    console.log(`agent timing: queue ${t.queue_us} us, compute ${t.compute_us} us, total ${t.total_us} us`);
  } catch (err) {
    if (typeof err.code !== 'number') throw err;
    // The agent's message names the offending value and how to fix it.
    console.error(`agent error: ${statusName(err.code)} (${err.code}): ${err.details}`);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
