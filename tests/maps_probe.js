<script>
// Injected by tests/test_mapview.py into a copy of maps.html: once Bokeh has rendered, it counts the images on
// the page, moves the pointer over the first hover point of the first map and collects the images shown, then
// switches the view to its last choice (the test images the embeddings' best model gets wrong), and writes what
// it saw, as JSON, into a pre element with id "probe" (read back with chromium --dump-dom).
(function () {
  function done(r) { var p = document.createElement("pre"); p.id = "probe"; p.textContent = JSON.stringify(r); document.body.appendChild(p); }
  function plots(v, out) { if (v.frame && v.canvas_view) out.push(v); for (var c of (v.child_views || [])) plots(c, out); return out; }
  function imgs(root, out) { root.querySelectorAll("*").forEach(function (e) { if (e.tagName === "IMG") out.push(e.src.slice(0, 22)); if (e.shadowRoot) imgs(e.shadowRoot, out); }); return out; }
  var tries = 0;
  function step() {
    try {
      if (!(window.Bokeh && Bokeh.documents.length && Object.keys(Bokeh.index).length)) {
        if (++tries < 150) setTimeout(step, 100); else done({ error: "Bokeh did not render" }); return;
      }
      var doc = Bokeh.documents[0], ps = [];
      Object.values(Bokeh.index).forEach(function (v) { plots(v, ps); });
      var r = { plots: ps.length, images_before: imgs(document, []).length };
      var pv = ps[0], hr = [...pv.renderer_views.values()].find(function (v) { return v.model.name === "hover"; });
      var src = hr.model.data_source, g = hr.model.glyph;
      var sx = pv.frame.x_scale.compute(src.data[g.x.field][0]), sy = pv.frame.y_scale.compute(src.data[g.y.field][0]);
      var el = pv.canvas_view.events_el, box = el.getBoundingClientRect();
      var at = { clientX: box.left + sx, clientY: box.top + sy, bubbles: true, pointerType: "mouse", isPrimary: true };
      el.dispatchEvent(new PointerEvent("pointerenter", at)); el.dispatchEvent(new PointerEvent("pointermove", at));
      r.hovered_label = src.data.label_name[0];
      var lg = doc.get_model_by_name("classes");
      r.legend = lg ? lg.items.map(function (it) { return it.label.value; }) : null;
      doc.all_models.forEach(function (m) {
        if (m.type === "CategoricalColorMapper" || (m.palette && m.factors)) { r.palette = m.palette; r.factors = m.factors; }
      });
      setTimeout(function () {
        r.images_after = imgs(document, []);
        var cards = []; (function find(root) { root.querySelectorAll("*").forEach(function (e) {
          if (e.tagName === "DIV" && e.style && e.style.width === "230px") { var b = e.getBoundingClientRect(); cards.push([b.width, b.height, e.innerText.slice(0, 300)]); }
          if (e.shadowRoot) find(e.shadowRoot); }); })(document);
        r.cards = cards;
        var fa = doc.get_model_by_name("all-filter"), sw = doc.get_model_by_name("show");
        r.shown_before = fa.booleans.filter(Boolean).length;
        sw.active = sw.labels.length - 1;
        setTimeout(function () {  // CustomJS runs asynchronously
          r.showing = document.body.dataset.showing; r.shown_after = fa.booleans.filter(Boolean).length; done(r);
        }, 800);
      }, 800);
    } catch (e) { done({ error: String(e) }); }
  }
  setTimeout(step, 100);
})();
</script>
