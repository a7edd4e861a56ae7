using Microsoft.ML.Lora.Tests;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

/// <summary>
/// The BERT encoder with and without LoRA on a CUDA device agrees with the CPU. Skipped (reported as skipped) without
/// CUDA; scripts/gpu-check.sh runs the same methods on a GPU machine.
/// </summary>
[TestClass]
[CudaCondition]
public sealed class CudaBertTests
{
    /// <summary>cuda:0 (or the CPU in a stand-in dry run, see <see cref="CudaConditionAttribute.CpuStandIn"/>).</summary>
    private static Device Gpu => CudaConditionAttribute.Device;

    private static BertConfig Config() => new()
    {
        VocabSize = 40,
        HiddenSize = 32,
        NumHiddenLayers = 2,
        NumAttentionHeads = 4,
        IntermediateSize = 64,
        MaxPositionEmbeddings = 16,
        HiddenDropoutProb = 0,
        AttentionProbsDropoutProb = 0,
    };

    private static BertModel Model(int seed)
    {
        manual_seed(seed);
        var model = new BertModel(Config());
        using (no_grad())
        {
            foreach (var (name, p) in model.named_parameters())
            {
                if (name.EndsWith(".bias", StringComparison.Ordinal) || name.Contains("LayerNorm", StringComparison.Ordinal))
                {
                    p.add_(randn_like(p).mul_(0.1));
                }
            }
        }

        return model;
    }

    /// <summary>Two rows, the second padded after 5 tokens, with a sentence pair in the first.</summary>
    private static (Tensor ids, Tensor mask, Tensor types) Batch(Device device)
    {
        var ids = tensor(new long[] { 2, 7, 9, 11, 3, 15, 16, 3, 2, 20, 21, 22, 3, 0, 0, 0 }, 2, 8).to(device);
        var mask = tensor(new long[] { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0 }, 2, 8).to(device);
        var types = tensor(new long[] { 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0 }, 2, 8).to(device);
        return (ids, mask, types);
    }

    // Float32 on both devices: only the summation order differs (cuBLAS vs CPU BLAS, fused softmax/LayerNorm kernels),
    // ~1e-6 relative per layer; 1e-4 of the hidden-state scale leaves two orders of magnitude. Compared at real tokens
    // only (padding rows attend to nothing meaningful and are not part of the contract).
    private const double Float32Tolerance = 1e-4;

    [TestMethod]
    public void BertModel_ForwardOnCuda_MatchesCpu()
    {
        using var scope = NewDisposeScope();
        var model = Model(21);
        model.eval();
        var (ids, mask, types) = Batch(CPU);
        var expected = model.call(ids, mask, types);

        model.to(Gpu);
        var (idsG, maskG, typesG) = Batch(Gpu);
        var actual = model.call(idsG, maskG, typesG);

        Assert.AreEqual(Gpu.type, actual.device_type, "output stays on the GPU");
        Assert.AreEqual(ScalarType.Float32, actual.dtype);
        var real = mask.to(ScalarType.Bool).unsqueeze(-1);
        Assert.IsLessThan(Float32Tolerance, RelativeDifference(actual.cpu().masked_fill(real.logical_not(), 0), expected.masked_fill(real.logical_not(), 0)));
    }

    [TestMethod]
    public void BertLoraStep_OnCuda_SameGradientsAsCpuAndOnlyLoraChanges()
    {
        using var scope = NewDisposeScope();
        var cpu = Classifier(22);
        var gpu = Classifier(22);
        gpu.to(Gpu);

        var gradsCpu = Step(cpu, CPU);
        var before = gpu.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().cpu().clone());
        var gradsGpu = Step(gpu, Gpu);

        CollectionAssert.AreEquivalent(gradsCpu.Keys.ToList(), gradsGpu.Keys.ToList(), "same trainable parameters");
        Assert.AreEqual(8, gradsCpu.Count, "2 layers × (query, value) × (A, B)");
        foreach (var (name, g) in gradsCpu)
        {
            if (name.EndsWith("lora_B", StringComparison.Ordinal))
            {
                Assert.IsGreaterThan(0.0, (double)g.abs().max().item<float>(), $"{name} gets a gradient");
            }

            // Summation order only (float32); gradients of A are exactly 0 on both devices at step 1 (B = 0).
            Assert.IsLessThanOrEqualTo(1e-3, AbsoluteOverScale(gradsGpu[name], g), name);
        }

        foreach (var (name, p) in gpu.named_parameters())
        {
            Assert.AreEqual(Gpu.type, p.device_type, name);
            bool isLora = name.Contains("lora_", StringComparison.Ordinal);
            bool same = p.detach().cpu().Equals(before[name]);
            if (isLora && name.EndsWith("lora_B", StringComparison.Ordinal))
            {
                Assert.IsFalse(same, $"{name} was updated");
            }
            else if (!isLora)
            {
                Assert.IsTrue(same, $"{name} is frozen");
            }
        }
    }

    [TestMethod]
    public void PretrainedModel_LoadFolderOntoCuda_MatchesCpuLoad()
    {
        using var scope = NewDisposeScope();
        string dir = Path.Combine(Path.GetTempPath(), "lora-cuda-" + Guid.NewGuid().ToString("N"));
        try
        {
            using (var model = Model(23))
            {
                model.SaveHuggingFace(dir);
            }

            File.WriteAllLines(Path.Combine(dir, "vocab.txt"),
                ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", .. Enumerable.Range(0, 35).Select(i => $"w{i}")]);
            var source = PretrainedModel.FromHuggingFaceFolder(dir);
            using var onCpu = source.Load();
            using var onGpu = source.Load(Gpu);

            Assert.AreEqual(onCpu.WeightsSha256, onGpu.WeightsSha256, "fingerprint does not depend on the device");
            Assert.IsFalse(onGpu.Model.training, "loaded in evaluation mode");
            foreach (var (name, p) in onGpu.Model.named_parameters())
            {
                Assert.AreEqual(Gpu.type, p.device_type, name);
            }

            var batch = onGpu.Tokenizer.Encode(["w1 w2 w3", "w4"], null, 8);
            var (ids, mask, types) = batch.ToTensors(Gpu);
            Assert.AreEqual(Gpu.type, ids.device_type, "EncodedBatch.ToTensors(Gpu) creates the tensors on the GPU");
            var actual = onGpu.Model.call(ids, mask, types);
            var (idsC, maskC, typesC) = batch.ToTensors();
            var expected = onCpu.Model.call(idsC, maskC, typesC);
            var real = maskC.to(ScalarType.Bool).unsqueeze(-1).logical_not();
            Assert.IsLessThan(Float32Tolerance, RelativeDifference(actual.cpu().masked_fill(real, 0), expected.masked_fill(real, 0)));

            // Saved from the GPU: the same files (weights fingerprint) as the CPU copy.
            string again = Path.Combine(dir, "from-gpu");
            onGpu.Model.SaveHuggingFace(again);
            File.Copy(Path.Combine(dir, "vocab.txt"), Path.Combine(again, "vocab.txt"));
            using var reloaded = PretrainedModel.FromHuggingFaceFolder(again).Load();
            Assert.AreEqual(onCpu.WeightsSha256, reloaded.WeightsSha256, "weights saved from the GPU are bit-identical");
        }
        finally
        {
            if (Directory.Exists(dir))
            {
                Directory.Delete(dir, recursive: true);
            }
        }
    }

    [TestMethod]
    public void BertModel_Bfloat16BaseWithFloat32Lora_OnCudaCloseToFloat32()
    {
        using var scope = NewDisposeScope();
        var config = new LoraConfig { r = 4, lora_alpha = 8, target_modules = ["query", "value"] };
        var reference = Model(24);
        lora.inject_adapter_in_model(config, reference);
        reference.to(Gpu);
        var mixed = Model(24);
        mixed.to(Gpu).to(ScalarType.BFloat16);             // frozen base in bfloat16 …
        lora.inject_adapter_in_model(config, mixed);        // … LoRA factors created in float32 beside it
        using (no_grad())
        {
            var refParams = reference.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            foreach (var (name, p) in mixed.named_parameters().Where(p => p.name.Contains("lora_", StringComparison.Ordinal)))
            {
                Assert.AreEqual(ScalarType.Float32, p.dtype, $"{name}: LoRA factor stays float32 over a bfloat16 base");
                nn.init.normal_(refParams[name], 0, 0.1);
                p.copy_(refParams[name]);
            }
        }

        Assert.AreEqual(ScalarType.BFloat16, mixed.named_parameters().First(p => p.name.EndsWith("query.weight", StringComparison.Ordinal)).parameter.dtype);
        lora.mark_only_lora_as_trainable(reference);
        lora.mark_only_lora_as_trainable(mixed);
        var (ids, mask, types) = Batch(Gpu);
        var yRef = reference.call(ids, mask, types);
        var yMixed = mixed.call(ids, mask, types);
        Assert.AreEqual(ScalarType.BFloat16, yMixed.dtype, "activations follow the base's dtype");
        var real = mask.to(ScalarType.Bool).unsqueeze(-1).logical_not();
        // bfloat16 keeps 8 significant bits (2^-9 relative per rounding); two layers of matmuls, softmax and
        // LayerNorm each round once or twice, so a few percent of the hidden-state scale bounds the difference.
        double forward = RelativeDifference(yMixed.to(ScalarType.Float32).masked_fill(real, 0), yRef.masked_fill(real, 0));
        Assert.IsLessThan(5e-2, forward, "bfloat16 base close to float32");

        yRef.masked_fill(real, 0).square().mean().backward();
        yMixed.to(ScalarType.Float32).masked_fill(real, 0).square().mean().backward();
        var refGrads = reference.named_parameters().Where(p => p.parameter.grad is not null).ToDictionary(p => p.name, p => p.parameter.grad!);
        foreach (var (name, p) in mixed.named_parameters().Where(p => p.parameter.requires_grad))
        {
            Assert.IsNotNull(p.grad, name);
            Assert.AreEqual(ScalarType.Float32, p.grad.dtype, $"{name}: float32 gradient (and so float32 optimizer state)");
            Assert.IsTrue(p.grad.isfinite().all().item<bool>(), $"{name}: finite gradient");
            // Gradients flow back through bfloat16 activations: 10% of the gradient scale.
            Assert.IsLessThan(0.1, RelativeDifference(p.grad, refGrads[name]), $"{name}: gradient close to float32");
        }
    }

    private static BertForSequenceClassification Classifier(int seed)
    {
        var model = new BertForSequenceClassification(Model(seed), 3, PoolingMode.Mean, dropout: 0);
        lora.inject_adapter_in_model(new LoraConfig { r = 4, lora_alpha = 8, target_modules = ["query", "value"] }, model);
        lora.mark_only_lora_as_trainable(model);
        return model;
    }

    private static Dictionary<string, Tensor> Step(BertForSequenceClassification model, Device device)
    {
        model.train();
        var (ids, mask, types) = Batch(device);
        var labels = tensor(new long[] { 2, 0 }, device: device);
        var optimizer = optim.AdamW(model.parameters().Where(p => p.requires_grad), lr: 1e-2);
        optimizer.zero_grad();
        nn.functional.cross_entropy(model.call(ids, mask, types), labels).backward();
        var grads = model.named_parameters().Where(p => p.parameter.grad is not null)
            .ToDictionary(p => p.name, p => p.parameter.grad!.detach().cpu().clone());
        optimizer.step();
        return grads;
    }

    private static double RelativeDifference(Tensor actual, Tensor expected)
    {
        using var scope = NewDisposeScope();
        var a = actual.to(ScalarType.Float64).cpu();
        var e = expected.to(ScalarType.Float64).cpu();
        return (a - e).abs().max().item<double>() / Math.Max(e.abs().max().item<double>(), 1e-30);
    }

    /// <summary>max|a − e| over the larger of both scales (both may be all zero, as A's gradient at step 1).</summary>
    private static double AbsoluteOverScale(Tensor actual, Tensor expected)
    {
        using var scope = NewDisposeScope();
        var a = actual.to(ScalarType.Float64).cpu();
        var e = expected.to(ScalarType.Float64).cpu();
        double scale = Math.Max(Math.Max(a.abs().max().item<double>(), e.abs().max().item<double>()), 1e-30);
        return (a - e).abs().max().item<double>() / scale;
    }

    [TestMethod]
    public void EncodedBatch_ToTensorsOnGpu_OnePinnedBlock_ManyBatchesArriveIntact()
    {
        using var scope = NewDisposeScope();
        var random = new Random(5);
        EncodedBatch Batch(int rows, int length)
        {
            long[] Values(int max) => Enumerable.Range(0, rows * length).Select(_ => (long)random.Next(max)).ToArray();
            return new EncodedBatch(rows, length, Values(30000), Values(2), Values(2));
        }

        var first = Batch(3, 5);
        bool cuda = Gpu.type == DeviceType.CUDA;
        using (var host = first.HostBlock(pinned: cuda))
        {
            // pin_memory needs CUDA: on the GPU the staging block is page-locked; the CPU path never pins.
            Assert.AreEqual(cuda, host.is_pinned(), "host block pinned exactly when the target is a CUDA device");
            CollectionAssert.AreEqual(first.InputIds.Concat(first.AttentionMask).Concat(first.TokenTypeIds).ToArray(), host.data<long>().ToArray());
        }

        // Many batches of changing shapes queued back to back with non-blocking copies, their host blocks released at
        // once; only then read back. A host buffer reused before its copy ran would show up as wrong values.
        var batches = Enumerable.Range(0, 200).Select(i => Batch(1 + (i % 7), 3 + (i % 11))).ToList();
        var sent = batches.Select(b => b.ToTensors(Gpu)).ToList();
        for (int i = 0; i < batches.Count; i++)
        {
            var (ids, mask, types) = sent[i];
            Assert.AreEqual(Gpu.type, ids.device_type);
            CollectionAssert.AreEqual(new long[] { batches[i].BatchSize, batches[i].SequenceLength }, ids.shape);
            CollectionAssert.AreEqual(batches[i].InputIds, ids.cpu().data<long>().ToArray(), $"batch {i} ids");
            CollectionAssert.AreEqual(batches[i].AttentionMask, mask.cpu().data<long>().ToArray(), $"batch {i} mask");
            CollectionAssert.AreEqual(batches[i].TokenTypeIds, types.cpu().data<long>().ToArray(), $"batch {i} token types");
        }
    }
}
