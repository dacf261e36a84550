// The built-in calibration text of `lathe quantize` (used when no --calib file is given): a few
// thousand tokens of deliberately varied material written for lathe: narrative prose, dialogue,
// technical explanation, source code in several languages, tables and numbers, lists, markup and
// a little non-English text, so every input channel of a model sees typical activations.
#include "engine/quantize.h"

namespace lathe::engine {

std::string_view builtin_calibration_text() {
  static constexpr std::string_view kText = R"CALIB(The lighthouse keeper climbed the spiral stairs for the last time that winter. Snow had
been falling since noon, soft at first and then in heavy sideways sheets that hid the harbour, the
fishing boats and the long grey line of the breakwater. At the top she trimmed the wick, polished the
great lens with a chamois cloth and sat down on the iron bench to write in the log: "Wind north-east,
force seven, visibility under half a mile. Lamp lit at 16:42. No vessels sighted." Then, after a
pause, she added a line she had never written before: "I think this will be the last season."

"You say that every year," her brother said when she came down, shaking the snow from her coat.
"And every year I mean it a little more." She poured tea from the dented pot and wrapped her hands
around the cup. "They are building an automatic beacon on the point. Solar panels, a battery, a
radio that reports to an office two hundred kilometres away. It will not need anyone to climb the
stairs."
"It will not notice the boats either," he said. "Not the way you do."

A hash table stores key-value pairs in an array of buckets. To insert a key, the table computes a
hash of the key, reduces it modulo the number of buckets, and places the pair in that bucket. Two
different keys may land in the same bucket; this is called a collision. Open addressing resolves
collisions by probing other buckets in a fixed sequence, while separate chaining keeps a small list
in each bucket. When the ratio of stored items to buckets, the load factor, grows beyond a threshold
such as 0.75, the table allocates a larger array and reinserts every item. Lookups, inserts and
deletes take constant time on average, but a poor hash function can degrade them to linear time.

    def merge_sorted(a, b):
        """Merge two sorted lists into one sorted list."""
        i, j, out = 0, 0, []
        while i < len(a) and j < len(b):
            if a[i] <= b[j]:
                out.append(a[i]); i += 1
            else:
                out.append(b[j]); j += 1
        out.extend(a[i:])
        out.extend(b[j:])
        return out

    template <typename T>
    T clamp_value(T x, T lo, T hi) {
      if (x < lo) return lo;
      return x > hi ? hi : x;
    }

    SELECT customer_id, COUNT(*) AS orders, SUM(total) AS revenue
    FROM orders
    WHERE created_at >= '2024-01-01'
    GROUP BY customer_id
    HAVING COUNT(*) > 3
    ORDER BY revenue DESC
    LIMIT 20;

    fn parse_port(s: &str) -> Result<u16, String> {
        s.trim().parse::<u16>().map_err(|e| format!("bad port {s:?}: {e}"))
    }

| city       | population | area (km2) | founded |
|------------|-----------:|-----------:|--------:|
| Riverton   |    412,300 |      188.4 |    1794 |
| Ashford    |     97,050 |       61.0 |    1851 |
| Port Kelby |  1,204,900 |      532.7 |    1702 |

Quarterly results: revenue rose 12.4% to $3.87 billion, operating margin widened from 18.1% to 19.6%,
and the company repurchased 4.2 million shares at an average price of $71.35. Guidance for the full
year was raised to between $15.1 and $15.4 billion. Inventory days fell from 64 to 57.

Recipe for a simple bread: 500 g flour, 350 ml warm water, 10 g salt, 7 g dried yeast.
1. Mix the flour and salt, then add the yeast on the other side of the bowl.
2. Pour in the water and stir until no dry flour remains.
3. Knead for ten minutes, cover, and leave to rise for about an hour.
4. Shape, rise again for 45 minutes, and bake at 220 C for 30 to 35 minutes.

Q: Why does ice float on water?
A: Water expands when it freezes. Its molecules arrange into a hexagonal lattice held by hydrogen
bonds, which leaves more empty space than in the liquid, so ice is about nine percent less dense.

<article>
  <h2>Release notes 2.4</h2>
  <ul>
    <li>Faster start-up on machines with many cores.</li>
    <li>The <code>--quiet</code> flag now also silences warnings.</li>
    <li>Fixed a crash when the configuration file was empty.</li>
  </ul>
</article>

{"id": 8812, "name": "sensor-7", "readings": [21.4, 21.6, 22.0, 21.9], "unit": "celsius", "ok": true}

Le train partait à huit heures précises. Sur le quai, une femme agitait la main vers une fenêtre où
personne ne répondait. Der Zug fuhr pünktlich ab, und draußen zogen Felder und kleine Dörfer vorbei.
El mercado abre temprano; los vendedores colocan naranjas, pan y flores antes de que salga el sol.
今日はとても寒いので、温かいお茶を飲みましょう。 这座城市的图书馆周末也开放。
Привет! Как дела? Сегодня мы изучаем основы теории вероятностей.

In probability, the expected value of a fair six-sided die is (1 + 2 + 3 + 4 + 5 + 6) / 6 = 3.5.
The variance is E[X^2] - (E[X])^2 = 91/6 - 12.25 = 35/12, about 2.9167. For n independent rolls the
sum has mean 3.5n and variance 35n/12, and by the central limit theorem its distribution approaches
a normal curve as n grows. Matrices multiply row by column: if A is 2x3 and B is 3x4 then AB is 2x4,
and in general AB differs from BA even when both products exist.

The committee met on Tuesday. Minutes: (a) the budget for the new footbridge was approved with one
abstention; (b) residents asked for more benches along the canal path; (c) the next meeting will be
held on the 14th at 7 pm in the school hall. Action items: contact the parks office, publish the
revised timetable, and collect quotes for lighting.

She closed the logbook and listened to the wind. Somewhere below, a bell buoy rang twice, then
again, steady as a heartbeat, and far out in the dark a small light answered it.
)CALIB";
  return kText;
}

}  // namespace lathe::engine
