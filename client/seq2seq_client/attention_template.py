"""The skeleton of the file that `attention_view.write_html` writes: the viewer itself (web/static/attention-viewer.css
and .js, shared with the web page) is inlined into __STYLE__ and __SCRIPT__, the attention into __DATA__ (JSON) and
the HTML-escaped title into __TITLE__. Inline only: the file opens offline, fetching nothing.
"""

HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { font: 14px/1.45 system-ui, "DejaVu Sans", sans-serif; margin: 16px; color: #1d1d1f; }
h1 { font-size: 18px; margin: 0 0 10px; }
__STYLE__
</style>
</head>
<body>
<h1>__TITLE__</h1>
<main id="viewer"></main>
<script type="application/json" id="attention-data">__DATA__</script>
<script>
__SCRIPT__
AttentionViewer.mount(document.getElementById("viewer"),
                      JSON.parse(document.getElementById("attention-data").textContent));
</script>
</body>
</html>
"""
