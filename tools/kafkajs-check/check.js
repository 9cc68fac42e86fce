// Reads loopwatch's retrain and rollback topics from the start with kafkajs and checks
// every record is a valid CloudEvents 1.0 structured-mode event whose ce_ headers agree
// with its body. Usage: node check.js BOOTSTRAP TOPIC [TOPIC ...]   (exit 1 on any problem)
const { Kafka, logLevel } = require('kafkajs');

const [bootstrap, ...topics] = process.argv.slice(2);
const required = ['specversion', 'id', 'source', 'type', 'subject', 'time', 'datacontenttype', 'data'];
const problems = [];
const seen = [];

function check(topic, message) {
  const event = JSON.parse(message.value.toString());
  const where = `${topic}@${message.offset}`;
  for (const field of required) if (!(field in event)) problems.push(`${where}: no ${field}`);
  if (event.specversion !== '1.0') problems.push(`${where}: specversion ${event.specversion}`);
  if (!/^io\.loopwatch\.(retrain|rollback)\./.test(event.type)) problems.push(`${where}: type ${event.type}`);
  if (Number.isNaN(Date.parse(event.time))) problems.push(`${where}: time ${event.time}`);
  const headers = Object.fromEntries(Object.entries(message.headers).map(([k, v]) => [k, v.toString()]));
  for (const field of ['specversion', 'id', 'source', 'type', 'subject', 'time'])
    if (headers[`ce_${field}`] !== String(event[field])) problems.push(`${where}: ce_${field} header disagrees`);
  seen.push({ topic, id: event.id, type: event.type, subject: event.subject, time: event.time });
}

(async () => {
  const kafka = new Kafka({ clientId: 'loopwatch-kafkajs-check', brokers: [bootstrap], logLevel: logLevel.ERROR });
  const consumer = kafka.consumer({ groupId: `kafkajs-check-${Date.now()}` });
  await consumer.connect();
  for (const topic of topics) await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({ eachMessage: async ({ topic, message }) => check(topic, message) });
  await new Promise((resolve) => setTimeout(resolve, 10000));
  await consumer.disconnect();
  console.log(JSON.stringify({ events: seen, problems }, null, 1));
  process.exit(problems.length || !seen.length ? 1 : 0);
})();
