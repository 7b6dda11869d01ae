// A recreation, for benchmarking Flotilla against it, of the course's blog service of the
// same name (Stephen Grider, "Microservices with Node JS and React", the blog app of its first
// sections): the same Express + body-parser + cors + axios code, in-memory objects, the same
// awaits and the same (lack of) error handling. Only change: ports and the other services'
// URLs come from environment variables (the course hard-coded them / used Kubernetes
// service names) so it can run beside Flotilla on one machine.
const express = require('express');
const bodyParser = require('body-parser');
const axios = require('axios');

const EVENT_BUS_URL = process.env.EVENT_BUS_URL || 'http://localhost:4005';
const PORT = process.env.MODERATION_PORT || 4003;

const app = express();
app.use(bodyParser.json());

app.post('/events', async (req, res) => {
  const { type, data } = req.body;

  if (type === 'CommentCreated') {
    const status = data.content.includes('orange') ? 'rejected' : 'approved';

    await axios.post(`${EVENT_BUS_URL}/events`, {
      type: 'CommentModerated',
      data: {
        id: data.id,
        postId: data.postId,
        status,
        content: data.content,
      },
    });
  }

  res.send({});
});

app.listen(PORT, () => {
  console.log(`Listening on ${PORT}`);
});
