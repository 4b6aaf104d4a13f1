"""The ward view: a web page over the broker (``lungwatch dashboard``, ``docs/dashboard.md``).
Modules: config, ward (state), feed (paho), server (Starlette), web (HTTP rules), login;
``static/`` the page (plain HTML, CSS and JavaScript)."""
