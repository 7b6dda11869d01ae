// A recreation, for benchmarking Flotilla against it, of the course's blog service of the
// same name (Stephen Grider, "Microservices with Node JS and React", the blog app of its first
// sections): the same Express + body-parser + cors + axios code, in-memory objects, the same
// awaits and the same (lack of) error handling. Only change: ports and the other services'
// URLs come from environment variables (the course hard-coded them / used Kubernetes
// service names) so it can run beside Flotilla on one machine.
//
// As in the course, a CommentCreated for a post this service has not seen yet (the bus
// sends PostCreated and CommentCreated concurrently) throws in handleEvent: Express answers
// 500, the bus only logs it, and that comment is never in the view.
const express = require('express');
const bodyParser = require('body-parser');
const cors = require('cors');
const axios = require('axios');

const EVENT_BUS_URL = process.env.EVENT_BUS_URL || 'http://localhost:4005';
const PORT = process.env.QUERY_PORT || 4002;

const app = express();
app.use(bodyParser.json());
app.use(cors());

const posts = {};

const handleEvent = (type, data) => {
  if (type === 'PostCreated') {
    const { id, title } = data;

    posts[id] = { id, title, comments: [] };
  }

  if (type === 'CommentCreated') {
    const { id, content, postId, status } = data;

    const post = posts[postId];
    post.comments.push({ id, content, status });
  }

  if (type === 'CommentUpdated') {
    const { id, content, postId, status } = data;

    const post = posts[postId];
    const comment = post.comments.find((comment) => {
      return comment.id === id;
    });

    comment.status = status;
    comment.content = content;
  }
};

app.get('/posts', (req, res) => {
  res.send(posts);
});

app.post('/events', (req, res) => {
  const { type, data } = req.body;

  handleEvent(type, data);

  res.send({});
});

app.listen(PORT, async () => {
  console.log(`Listening on ${PORT}`);
  try {
    const res = await axios.get(`${EVENT_BUS_URL}/events`);

    for (let event of res.data) {
      console.log('Processing event:', event.type);

      handleEvent(event.type, event.data);
    }
  } catch (error) {
    console.log(error.message);
  }
});
