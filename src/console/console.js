// Shows every <time> in the viewer's time zone; the UTC time stays in its tooltip.
document.querySelectorAll("time[datetime]").forEach(function (el) {
  var ms = Number(el.getAttribute("datetime"));
  if (!isNaN(ms)) { el.textContent = new Date(ms).toLocaleString(); }
});
