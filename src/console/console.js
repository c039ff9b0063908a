// The console's one script (no inline script is allowed). Everything works without it; it
// adds the review fast path's keys, the full-size image and "select the page".

// Keys: the element whose data-key is the key pressed is clicked (a button submits its form,
// a link is followed). j/k next/previous, a/r approve/reject & next, v full-size image.
document.addEventListener("keydown", function (e) {
  if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing || !/^[jkarv]$/.test(e.key)) { return; }
  var t = e.target;
  if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) { return; }
  var figure = document.getElementById("image");
  if (e.key === "Escape" && figure && figure.classList.contains("zoomed")) {
    figure.classList.remove("zoomed");
    return;
  }
  var el = document.querySelector('[data-key="' + e.key + '"]');
  if (!el) { return; }
  e.preventDefault();
  if (el.tagName === "A") { window.location.assign(el.href); } else { el.click(); }
});

// Full size: the image over the page at its own size; again (or Esc) to close.
(function () {
  var figure = document.getElementById("image");
  var image = document.getElementById("anchor-image");
  var zoom = document.getElementById("zoom");
  if (!figure || !image) { return; }
  var toggle = function () { figure.classList.toggle("zoomed"); };
  image.addEventListener("click", toggle);
  if (zoom) { zoom.addEventListener("click", toggle); }
})();

// One box selects (or clears) every filing on the queue's page.
(function () {
  var all = document.getElementById("pick-all");
  if (!all) { return; }
  all.addEventListener("change", function () {
    document.querySelectorAll("input.pick").forEach(function (box) { box.checked = all.checked; });
  });
})();

// The viewer's time zone, for the server to show and read every time in: kept in the `tz`
// cookie; a page shown before the server knew it (or after it changed) is shown again.
(function () {
  var zone = "";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { return; }
  if (!/^[A-Za-z0-9_+\-\/]{1,64}$/.test(zone)) { return; }
  var current = (document.cookie.match(/(?:^|; )tz=([^;]*)/) || [])[1];
  if (current === zone) { return; }
  document.cookie = "tz=" + zone + "; Path=/; SameSite=Strict; Max-Age=31536000" +
    (location.protocol === "https:" ? "; Secure" : "");
  // Only when the zone was unknown (a changed one shows from the next page on), and once per
  // tab at most: a browser that keeps no cookies is not reloaded forever. (A page answering a
  // form always comes after the sign-in page set the cookie, so no form is posted again.)
  var reloaded = false;
  try { reloaded = sessionStorage.getItem("tz-reloaded") === zone; } catch (e) { reloaded = true; }
  if (!current && !reloaded && document.querySelector("time[datetime], input[type=datetime-local]")) {
    try { sessionStorage.setItem("tz-reloaded", zone); } catch (e) { return; }
    location.reload();
  }
})();
