/* dbaccess web inbox: the only script, loaded from the broker itself (no inline
   script anywhere; the Content-Security-Policy allows none).
   - #inbox[data-src] is refreshed in place every data-interval ms while the
     tab is visible: the server
     renders the rows, marked by the X-Dbaccess-Fragment header; any other
     answer (a login page after the session ended) reloads the page instead.
   - a[data-autofollow] is followed at once (the page after login).
   - a submitted form's buttons are disabled, so a double click sends once
     (the server settles repeats anyway). */
(function () {
  "use strict";

  var box = document.getElementById("inbox");
  if (box && box.dataset.src) {
    var interval = parseInt(box.dataset.interval, 10) || 2000;
    var last = null;
    var busy = false;
    var poll = function () {
      if (busy || document.visibilityState === "hidden") { return; }
      busy = true;
      fetch(box.dataset.src, { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (response.headers.get("X-Dbaccess-Fragment") !== "inbox") {
            window.location.reload();
            return null;
          }
          return response.text();
        })
        .then(function (html) {
          if (html !== null && html !== last) {
            last = html;
            box.innerHTML = html;
          }
        })
        .catch(function () { /* the broker is away: try again next time */ })
        .then(function () { busy = false; });
    };
    window.setInterval(poll, interval);
  }

  var follow = document.querySelector("a[data-autofollow]");
  if (follow) {
    window.location.replace(follow.getAttribute("href"));
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    window.setTimeout(function () {
      form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    }, 0);
  });
})();
