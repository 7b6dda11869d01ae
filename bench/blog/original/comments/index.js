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
const PORT = process.env.COMMENTS_PORT || 4001;

const app = express();
app.use(bodyParser.json());
app.use(cors());

const commentsByPostId = {};

app.get('/posts/:id/comments', (req, res) => {
  res.send(commentsByPostId[req.params.id] || []);
});

app.post('/posts/:id/comments', async (req, res) => {
  const commentId = randomBytes(4).toString('hex');
  const { content } = req.body;

  const comments = commentsByPostId[req.params.id] || [];

  comments.push({ id: commentId, content, status: 'pending' });

  commentsByPostId[req.params.id] = comments;

  await axios.post(`${EVENT_BUS_URL}/events`, {
    type: 'CommentCreated',
    data: {
      id: commentId,
      content,
      postId: req.params.id,
      status: 'pending',
    },
  });

  res.status(201).send(comments);
});

app.post('/events', async (req, res) => {
  console.log('Event Received:', req.body.type);

  const { type, data } = req.body;

  if (type === 'CommentModerated') {
    const { postId, id, status, content } = data;
    const comments = commentsByPostId[postId];

    const comment = comments.find((comment) => {
      return comment.id === id;
    });
    comment.status = status;

    await axios.post(`${EVENT_BUS_URL}/events`, {
      type: 'CommentUpdated',
      data: {
        id,
        status,
        postId,
        content,
      },
    });
  }

  res.send({});
});

app.listen(PORT, () => {
  console.log(`Listening on ${PORT}`);
});
