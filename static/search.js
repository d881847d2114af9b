// The results page: GET /search?q= (ranked full-text search; "#tag" lists a tag),
// page by page. The header's search box holds the query.
import { PagedList, say, videoCard } from "./ui.js";

const page = document.getElementById("search-page");
const query = page.dataset.query;

if (query) {
  const results = new PagedList({
    list: document.getElementById("search-results"),
    more: document.getElementById("more-results"),
    empty: document.getElementById("no-results"),
    path: `/search?q=${encodeURIComponent(query)}`,
    render: (video) => videoCard(video),
  });
  results.load().catch((error) => say(document.getElementById("search-message"), error.message));
}
