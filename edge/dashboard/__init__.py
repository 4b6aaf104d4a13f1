"""The ward view: a web page over the broker (``lungwatch dashboard``, ``docs/dashboard.md``).

- :mod:`edge.dashboard.config`: the ``dashboard`` block of a runtime config, password hashes
  (no paho, no web server: the runtime's config loader imports it);
- :mod:`edge.dashboard.intake`: one MQTT payload to a JSON object within limits (size, nesting,
  numbers), or the reason it was refused;
- :mod:`edge.dashboard.ward`: the ward's state, built only from the published topics;
- :mod:`edge.dashboard.feed`: the paho client that reads the site's topics and publishes
  acknowledge commands;
- :mod:`edge.dashboard.web`: the HTTP rules (allowed hosts, strict headers, security headers)
  and what the view adds to uvicorn's protocol (connection caps, request and write deadlines);
- :mod:`edge.dashboard.login`: logins in the same time for every name, failed ones bounded;
- :mod:`edge.dashboard.server`: the web server, a Starlette application on uvicorn (page,
  Server-Sent Events, acknowledge);
- :mod:`edge.dashboard.cli`: ``lungwatch dashboard``;
- ``static/``: the page (plain HTML, CSS and JavaScript; nothing fetched from elsewhere).
"""
