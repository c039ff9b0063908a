// The console's one script (no inline script is allowed). Everything works without it; it
// adds the review fast path's keys, the full-size image and "select the page".

// Keys: the element whose data-key is the key pressed is clicked (a button submits its form,
// a link is followed). j/k next/previous, a/r approve/reject & next, v full-size image.
document.addEventListener("keydown", function (e) {
  if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing) { return; }
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

// Shows every <time> in the viewer's time zone; the UTC time stays in its tooltip.
document.querySelectorAll("time[datetime]").forEach(function (el) {
  var ms = Number(el.getAttribute("datetime"));
  if (!isNaN(ms)) { el.textContent = new Date(ms).toLocaleString(); }
});
