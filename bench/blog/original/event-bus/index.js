// A recreation, for benchmarking Flotilla against it, of the course's blog service of the
// same name (Stephen Grider, "Microservices with Node JS and React", the blog app of its first
// sections): the same Express + body-parser + cors + axios code, in-memory objects, the same
// awaits and the same (lack of) error handling. Only change: ports and the other services'
// URLs come from environment variables (the course hard-coded them / used Kubernetes
// service names) so it can run beside Flotilla on one machine.
const express = require('express');
const bodyParser = require('body-parser');
const axios = require('axios');

const POSTS_URL = process.env.POSTS_URL || 'http://localhost:4000';
const COMMENTS_URL = process.env.COMMENTS_URL || 'http://localhost:4001';
const QUERY_URL = process.env.QUERY_URL || 'http://localhost:4002';
const MODERATION_URL = process.env.MODERATION_URL || 'http://localhost:4003';
const PORT = process.env.EVENT_BUS_PORT || 4005;

const app = express();
app.use(bodyParser.json());

const events = [];

app.post('/events', (req, res) => {
  const event = req.body;

  events.push(event);

  axios.post(`${POSTS_URL}/events`, event).catch((err) => {
    console.log(err.message);
  });
  axios.post(`${COMMENTS_URL}/events`, event).catch((err) => {
    console.log(err.message);
  });
  axios.post(`${QUERY_URL}/events`, event).catch((err) => {
    console.log(err.message);
  });
  axios.post(`${MODERATION_URL}/events`, event).catch((err) => {
    console.log(err.message);
  });
  res.send({ status: 'OK' });
});

app.get('/events', (req, res) => {
  res.send(events);
});

app.listen(PORT, () => {
  console.log(`Listening on ${PORT}`);
});
