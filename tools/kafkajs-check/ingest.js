// Produces one valid InferenceLog and five malformed messages into loopwatch's inference
// topic with kafkajs, then reads the enriched and dead-letter topics and checks that the
// valid one was forwarded and each malformed one was dead-lettered with the expected reason
// and its original bytes. Usage: node ingest.js BOOTSTRAP [TOPIC_PREFIX]   (exit 1 on any problem)
const { Kafka, logLevel } = require('kafkajs');

const [bootstrap, prefix = ''] = process.argv.slice(2);
const topics = {
  inference: `${prefix}llm.inference.v1`,
  enriched: `${prefix}loopwatch.inference-enriched.v1`,
  deadletter: `${prefix}loopwatch.deadletter.v1`,
};
const run = `kafkajs-${Date.now()}`;

const valid = {
  schema_version: '1',
  event_id: `${run}-ok`,
  request_id: `${run}-ok`,
  timestamp: new Date().toISOString(),
  model: { name: 'kafkajs-check', version: '1' },
  prompt: 'What is the capital of France?',
  response: 'Paris is the capital of France.',
  latency_ms: 412,
};
const { model, ...withoutModel } = valid;
// key -> [value, the dead-letter reason loopwatch must give]
const malformed = {
  [`${run}-json`]: [Buffer.from('{"schema_version": "1", "event_id": '), 'malformed_json'],
  [`${run}-utf8`]: [Buffer.concat([Buffer.from('{"prompt": "'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]), 'invalid_utf8'],
  [`${run}-missing`]: [Buffer.from(JSON.stringify({ ...withoutModel, request_id: `${run}-missing` })), 'missing_field'],
  [`${run}-type`]: [Buffer.from(JSON.stringify({ ...valid, request_id: `${run}-type`, latency_ms: 'fast' })), 'wrong_type'],
  [`${run}-version`]: [Buffer.from(JSON.stringify({ ...valid, request_id: `${run}-version`, schema_version: '9' })), 'unknown_schema_version'],
};

(async () => {
  const kafka = new Kafka({ clientId: 'loopwatch-kafkajs-ingest', brokers: [bootstrap], logLevel: logLevel.ERROR });
  const producer = kafka.producer();
  await producer.connect();
  await producer.send({
    topic: topics.inference,
    messages: [
      { key: valid.request_id, value: JSON.stringify(valid) },
      ...Object.entries(malformed).map(([key, [value]]) => ({ key, value })),
    ],
  });
  await producer.disconnect();

  const forwarded = new Set();
  const letters = {};
  const consumer = kafka.consumer({ groupId: `${run}-reader` });
  await consumer.connect();
  await consumer.subscribe({ topic: topics.enriched, fromBeginning: true });
  await consumer.subscribe({ topic: topics.deadletter, fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ topic, message }) => {
      const key = message.key ? message.key.toString() : '';
      if (!key.startsWith(run)) return;
      if (topic === topics.enriched) forwarded.add(key);
      else letters[key] = JSON.parse(message.value.toString());
    },
  });
  const deadline = Date.now() + 60000;
  while (Date.now() < deadline && !(forwarded.size === 1 && Object.keys(letters).length === Object.keys(malformed).length)) {
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  await consumer.disconnect();

  const problems = [];
  if (!forwarded.has(valid.request_id)) problems.push(`the valid event ${valid.request_id} was not forwarded`);
  for (const [key, [value, reason]] of Object.entries(malformed)) {
    const letter = letters[key];
    if (!letter) { problems.push(`${key}: no dead letter`); continue; }
    if (letter.reason !== reason) problems.push(`${key}: reason ${letter.reason}, expected ${reason}`);
    if (Buffer.from(letter.value_b64, 'base64').compare(value) !== 0) problems.push(`${key}: original bytes differ`);
    if (!letter.error) problems.push(`${key}: no error message`);
  }
  const summary = Object.fromEntries(Object.entries(letters).map(([key, l]) => [key, `${l.reason}: ${l.error}`]));
  console.log(JSON.stringify({ forwarded: [...forwarded], dead_letters: summary, problems }, null, 1));
  process.exit(problems.length ? 1 : 0);
})().catch((error) => { console.error(error); process.exit(1); });
