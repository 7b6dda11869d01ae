// A recreation, for benchmarking Flotilla against it, of the course's blog service of the
// same name (Stephen Grider, "Microservices with Node JS and React", the blog app of its first
// sections): the same Express + body-parser + cors + axios code, in-memory objects, the same
// awaits and the same (lack of) error handling. Only change: ports and the other services'
// URLs come from environment variables (the course hard-coded them / used Kubernetes
// service names) so it can run beside Flotilla on one machine.
const express = require('express');
const bodyParser = require('body-parser');
const { randomBytes } = require('crypto');
const cors = require('cors');
const axios = require('axios');

const EVENT_BUS_URL = process.env.EVENT_BUS_URL || 'http://localhost:4005';
const PORT = process.env.POSTS_PORT || 4000;

const app = express();
app.use(bodyParser.json());
app.use(cors());

const posts = {};

app.get('/posts', (req, res) => {
  res.send(posts);
});

app.post('/posts/create', async (req, res) => {
  const id = randomBytes(4).toString('hex');
  const { title } = req.body;

  posts[id] = {
    id,
    title,
  };

  await axios.post(`${EVENT_BUS_URL}/events`, {
    type: 'PostCreated',
    data: {
      id,
      title,
    },
  });

  res.status(201).send(posts[id]);
});

app.post('/events', (req, res) => {
  console.log('Received Event', req.body.type);

  res.send({});
});

app.listen(PORT, () => {
  console.log(`Listening on ${PORT}`);
});
