using System.Globalization;
using Microsoft.ML.Lora.Models;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Issue "Performance, round 2" §2 and §3: our MiniLM steps against the same steps in PyTorch 1.13
/// (bench/pytorch/peer_step.py, same weights and ids) and the LoRA step's FLOP rate against three denominators
/// (libtorch sgemm, the best other sgemm, the vector-unit peak), with the matmul rates sampled before, between and
/// after the rounds and the machine's load over the run. Ours and the peer alternate step by step.
/// </summary>
internal static class PeerSuite
{
    private static readonly string[] Variants = ["lora", "full", "forward"];

    public static void Run(BenchReport report, string repoRoot, int threads, bool quick)
    {
        int rounds = quick ? 3 : 7;
        const int batch = 32, seq = 64;
        string dir = Path.Combine(Path.GetTempPath(), $"lora-peer-{Environment.ProcessId}");
        try
        {
            using var data = TrainingSuite.Batch(batch, seq);
            using var qv = TrainingSuite.Build(TrainingSuite.Variant.LoraQv);
            using var full = TrainingSuite.Build(TrainingSuite.Variant.Full);
            using var loaded = PretrainedModel.MiniLmL6V2.Load();
            BertModel bert = loaded.Model;
            bert.eval();
            bert.SaveHuggingFace(dir);
            string batchFile = Path.Combine(dir, "batch.bin");
            WriteBatch(batchFile, data.Ids, data.Labels);

            using var peer = PythonPeer.Start(repoRoot, threads, dir, batchFile);
            report.Note("PyTorch peer (bench/pytorch/peer_step.py): " + peer.Ask("info"));
            report.Note(SameModel(peer, bert, data, dir));

            var ours = new Dictionary<string, Action>
            {
                ["lora"] = EncoderSuite.Step(qv.Model, data.Ids, data.Mask, data.Types, data.Labels),
                ["full"] = EncoderSuite.Step(full.Model, data.Ids, data.Mask, data.Types, data.Labels),
                ["forward"] = () => { using var s = NewDisposeScope(); using var g = no_grad(); bert.call(data.Ids, data.Mask, data.Types); },
            };
            var oursMs = Variants.ToDictionary(v => v, _ => new List<double>());
            var peerMs = Variants.ToDictionary(v => v, _ => new List<double>());
            foreach (string v in Variants)
            {
                ours[v]();
                peer.StepMs(v);
            }

            var load = new MachineLoad(() => MachineLoad.ProcessSeconds(peer.ProcessId));
            using var limit = new LimitSuite(peer, threads);
            limit.Sample("before");
            for (int r = 0; r < rounds; r++)
            {
                foreach (string v in Variants)
                {
                    // Alternate who goes first, so neither always runs on the other's warm (or cold) caches.
                    if (r % 2 == 0)
                    {
                        oursMs[v].Add(Measure.Time(ours[v]));
                        peerMs[v].Add(peer.StepMs(v));
                    }
                    else
                    {
                        peerMs[v].Add(peer.StepMs(v));
                        oursMs[v].Add(Measure.Time(ours[v]));
                    }
                }
                limit.Sample(r == rounds - 1 ? "after" : $"between {r + 1}");
            }

            double lora = Measure.Median(oursMs["lora"]), peerLora = Measure.Median(peerMs["lora"]);
            report.Add(new BenchRow("peer", $"MiniLM training step {batch}×{seq}, LoRA r=8 q,v", "ms", lora, peerLora,
                "ours (TorchSharp)", "PyTorch 1.13", "≤ 0.75×", lora / peerLora <= 0.75));
            report.Add(new BenchRow("peer", $"MiniLM training step {batch}×{seq}, full fine-tuning", "ms",
                Measure.Median(oursMs["full"]), Measure.Median(peerMs["full"]), "ours (TorchSharp)", "PyTorch 1.13"));
            report.Add(new BenchRow("peer", $"MiniLM forward {batch}×{seq}, no grad", "ms",
                Measure.Median(oursMs["forward"]), Measure.Median(peerMs["forward"]), "ours (TorchSharp)", "PyTorch 1.13"));
            foreach (string v in Variants)
                report.Note(FormattableString.Invariant(
                    $"peer suite, {v}: ours {string.Join(", ", oursMs[v].Select(t => t.ToString("F0", CultureInfo.InvariantCulture)))} ms; PyTorch {string.Join(", ", peerMs[v].Select(t => t.ToString("F0", CultureInfo.InvariantCulture)))} ms (round by round)"));

            LimitRows(report, limit, qv.Model.Bert.Config, batch, seq, lora, peerLora, threads);
            report.Note(load.Summary("the peer suite"));
            OpProfile(report, qv.Model.Bert.Config, batch, seq, lora, quick);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
    }

    private static void LimitRows(BenchReport report, LimitSuite limit, BertConfig config, int batch, int seq, double loraMs, double peerLoraMs, int threads)
    {
        foreach (string note in limit.SpreadNotes()) report.Note(note);
        double flops = TrainingSuite.StepFlops(config, batch, seq, fullFineTuning: false);
        double rate = flops / (loraMs / 1000) / 1e9;
        double peerRate = flops / (peerLoraMs / 1000) / 1e9;
        var (libtorch, libtorchShapes) = limit.BestMedian(LimitSuite.LibTorch);
        var other = limit.Backends.Where(b => b != LimitSuite.LibTorch).Select(b => (backend: b, best: limit.BestMedian(b))).MaxBy(x => x.best.gflops);
        bool otherIsBest = other.best.gflops > libtorch;
        string name = FormattableString.Invariant($"LoRA q,v step FLOP rate ({flops / 1e9:F1} GFLOP/step)");
        report.Add(new BenchRow("limit", name, "GFLOP/s", rate, libtorch, "achieved", $"(1) libtorch sgemm, {libtorchShapes}, median",
            otherIsBest ? null : "≥ 0.6× best measured sgemm", otherIsBest ? null : rate / libtorch >= 0.6));
        report.Add(new BenchRow("limit", name, "GFLOP/s", rate, other.best.gflops, "achieved", $"(2) best other sgemm: {other.backend}, {other.best.shapes}, median",
            otherIsBest ? "≥ 0.6× best measured sgemm" : null, otherIsBest ? rate / other.best.gflops >= 0.6 : null));
        double peak = LimitSuite.PeakGflops(threads, out string assumption);
        report.Add(new BenchRow("limit", name, "GFLOP/s", rate, peak, "achieved", "(3) vector-unit peak", Note: assumption));
        report.Note("peak assumption: " + assumption);
        report.Note(FormattableString.Invariant(
            $"PyTorch 1.13's LoRA step runs the same {flops / 1e9:F1} GFLOP at {peerRate:F1} GFLOP/s ({peerRate / Math.Max(libtorch, other.best.gflops):F2} of the best measured sgemm)"));
    }

    // Checks that the peer computes the same function: the mean-pooled eval forward of both on the same weights and ids.
    private static string SameModel(PythonPeer peer, BertModel bert, TrainingSuite.TrainingBatch data, string dir)
    {
        string path = Path.Combine(dir, "pooled.f32");
        peer.Ask("pooled " + path);
        byte[] bytes = File.ReadAllBytes(path);
        float[] theirs = new float[bytes.Length / 4];
        Buffer.BlockCopy(bytes, 0, theirs, 0, bytes.Length);
        using var scope = NewDisposeScope();
        using var g = no_grad();
        float[] mine = Pooling.Pool(bert.call(data.Ids, data.Mask, data.Types), data.Mask, PoolingMode.Mean, normalize: false).data<float>().ToArray();
        if (mine.Length != theirs.Length)
            throw new InvalidOperationException($"The peer's pooled output has {theirs.Length} values, ours {mine.Length}.");
        double maxDiff = mine.Zip(theirs, (a, b) => Math.Abs(a - b)).Max();
        if (maxDiff > 1e-3)
            throw new InvalidOperationException($"The PyTorch peer does not compute our model: pooled outputs differ by up to {maxDiff:G3}.");
        return FormattableString.Invariant($"same model: the peer's eval forward (mean-pooled, MiniLM weights, same ids) matches ours to {maxDiff:G2} (max abs diff over {mine.Length} values)");
    }

    private static void WriteBatch(string path, Tensor ids, Tensor labels)
    {
        using var w = new BinaryWriter(File.Create(path + ".tmp"));
        w.Write(ids.shape[0]);
        w.Write(ids.shape[1]);
        foreach (long v in ids.data<long>()) w.Write(v);
        foreach (long v in labels.data<long>()) w.Write(v);
        w.Close();
        File.Move(path + ".tmp", path, overwrite: true);
    }

    /// <summary>
    /// Ours, per op: each kind of op of the LoRA q,v step timed alone at the step's shapes (forward and backward, as
    /// often as one step runs it), against the measured step; the rest is embeddings, pooling, head, loss and overhead.
    /// </summary>
    private static void OpProfile(BenchReport report, BertConfig c, int batch, int seq, double stepMs, bool quick)
    {
        int reps = quick ? 3 : 5;
        int layers = c.NumHiddenLayers, h = c.HiddenSize, inter = c.IntermediateSize, heads = c.NumAttentionHeads;
        double Time(Action a)
        {
            a();
            var t = new List<double>();
            for (int i = 0; i < reps; i++) t.Add(Measure.Time(a));
            return Measure.Median(t);
        }
        double Linear(int k, int n)
        {
            using var x = randn(batch, seq, k).requires_grad_();
            using var w = randn(n, k).mul_(0.02);
            using var b = zeros(n);
            return Time(() => { using var s = NewDisposeScope(); var y = F.linear(x, w, b); y.backward([ones_like(y)]); });
        }
        double matmul = layers * (4 * Linear(h, h) + Linear(h, inter) + Linear(inter, h));
        double attention;
        using (var q = randn(batch, heads, seq, h / heads).requires_grad_())
        using (var k = randn(batch, heads, seq, h / heads).requires_grad_())
        using (var v = randn(batch, heads, seq, h / heads).requires_grad_())
        using (var mask = zeros(batch, 1, 1, seq))
            attention = layers * Time(() => { using var s = NewDisposeScope(); var o = F.scaled_dot_product_attention(q, k, v, mask, 0.1, false); o.backward([ones_like(o)]); });
        double layerNorm, dropout, gelu, lora;
        using (var x = randn(batch, seq, h).requires_grad_())
        using (var wn = ones(h))
        using (var bn = zeros(h))
        {
            layerNorm = (2 * layers + 1) * Time(() => { using var s = NewDisposeScope(); var y = F.layer_norm(x, [h], wn, bn, 1e-12); y.backward([ones_like(y)]); });
            dropout = (2 * layers + 1) * Time(() => { using var s = NewDisposeScope(); var y = F.dropout(x, 0.1, true); y.backward([ones_like(y)]); });
            using var a = randn(8, h).mul_(0.05).requires_grad_();
            using var bu = zeros(h, 8).requires_grad_();
            lora = 2 * layers * Time(() => { using var s = NewDisposeScope(); var y = F.linear(F.linear(x, a), bu).mul(2.0); y.backward([ones_like(y)]); });
        }
        using (var x = randn(batch, seq, inter).requires_grad_())
            gelu = layers * Time(() => { using var s = NewDisposeScope(); var y = F.gelu(x); y.backward([ones_like(y)]); });
        double adamw;
        {
            var ps = Enumerable.Range(0, 2 * layers).SelectMany(_ => new[] { new TorchSharp.Modules.Parameter(randn(8, h)), new TorchSharp.Modules.Parameter(randn(h, 8)) }).ToList();
            foreach (var p in ps) p.grad = randn_like(p);
            var opt = optim.AdamW(ps, lr: 1e-4);
            adamw = Time(() => { using var s = NewDisposeScope(); opt.step(); });
            opt.Dispose();
            foreach (var p in ps) p.Dispose();
        }
        var parts = new (string name, double ms)[]
        {
            ("matmul (36 frozen linear layers, forward + input gradient)", matmul),
            ("attention (SDPA with mask and dropout, forward + backward)", attention),
            ("LoRA branches (12 × x·Aᵀ·Bᵀ, forward + backward)", lora),
            ("GELU (forward + backward)", gelu),
            ("LayerNorm (13, forward + backward)", layerNorm),
            ("dropout (13 hidden-state dropouts, forward + backward)", dropout),
            ("AdamW step over the LoRA factors", adamw),
        };
        double sum = parts.Sum(p => p.ms);
        report.Note(FormattableString.Invariant(
            $"ours, per op, each op alone at the LoRA q,v step's shapes (step measured {stepMs:F0} ms): ") +
            string.Join("; ", parts.Select(p => FormattableString.Invariant($"{p.name} {p.ms:F0} ms ({p.ms / stepMs:P0})"))) +
            FormattableString.Invariant($"; rest (embeddings, pooling, head, loss, autograd bookkeeping) {stepMs - sum:F0} ms ({(stepMs - sum) / stepMs:P0})"));
    }
}
