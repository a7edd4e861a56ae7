using System.Globalization;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;
using LoraLayer = Microsoft.ML.Lora.Modules.LoraLayer;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Cross-check against a second framework: the layers' training forward, the gradients of both factors and of the input,
/// the merged forward and <c>lora_state_dict</c>'s key sets, on shared random weights, against
/// <c>test/pytorch/loralib_reference.py</c> (loralib's math written independently in PyTorch, evaluated in float64).
/// </summary>
[TestClass]
[PyTorchCondition]
public sealed class LoralibReferenceTests
{
    private const string Script = "test/pytorch/loralib_reference.py";

    /// <summary>
    /// float32 against a float64 reference: each output is a sum of at most a few hundred float32 products of values of
    /// order 1, so its rounding error stays below ~1e-6 relative; 1e-5 leaves a margin for other CPU kernels.
    /// </summary>
    private const double Tolerance = 1e-5;

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    [DataRow("Linear")]
    [DataRow("Embedding")]
    [DataRow("MergedLinear")]
    [DataRow("Conv1d")]
    [DataRow("Conv2d")]
    [DataRow("Conv3d")]
    [DataRow("Conv2dPeft")]
    public void Layers_SharedRandomWeights_MatchPyTorchReference(string family)
    {
        var dir = Path.Combine(Path.GetTempPath(), "loralib-reference-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            var cases = WriteCases(dir, family);
            var (code, stdout, stderr) = PyTorchReference.Run(PyTorchReference.FindInRepository(Script), [dir]);
            TestContext.WriteLine($"python3 {Script} {dir}\n{stdout}");
            Assert.AreEqual(0, code, $"reference script failed:\n{stdout}\n{stderr}");

            var results = stdout.Split('\n').Where(l => l.StartsWith("RESULT ", StringComparison.Ordinal)).ToList();
            var keys = stdout.Split('\n').Where(l => l.StartsWith("KEYS ", StringComparison.Ordinal)).ToList();
            var expectedResults = cases.Sum(c => (string)c["kind"] == "Embedding" ? 4 : 5);
            Assert.AreEqual(expectedResults, results.Count, $"one line per quantity:\n{stdout}");
            Assert.AreEqual(3 * cases.Count(c => (string)c["kind"] != "ConvPeft"), keys.Count, $"three bias modes per loralib case:\n{stdout}");
            foreach (var line in results)
            {
                var rel = double.Parse(line[(line.IndexOf("max_rel=", StringComparison.Ordinal) + 8)..].Trim(), CultureInfo.InvariantCulture);
                Assert.IsTrue(rel <= Tolerance, $"{line} (tolerance {Tolerance})");
            }

            foreach (var line in keys)
            {
                Assert.IsTrue(line.Split(' ')[3] == "OK", line);
            }

            // lora.loralib_state_dict loads strictly into loralib's own module layout wherever loralib can build the layer.
            var loads = stdout.Split('\n').Where(l => l.StartsWith("LOAD ", StringComparison.Ordinal)).ToList();
            Assert.AreEqual(cases.Count(c => (string)c["kind"] == "ConvLoralib"), loads.Count, stdout);
            foreach (var line in loads)
            {
                var status = line.Split(' ')[2];
                Assert.IsTrue(status is "OK" or "SKIPPED", line);
                if (status == "OK")
                {
                    var rel = double.Parse(line[(line.IndexOf("max_rel=", StringComparison.Ordinal) + 8)..].Trim(), CultureInfo.InvariantCulture);
                    Assert.IsTrue(rel <= Tolerance, line);
                }
            }

            if (family == "Conv2d")
            {
                Assert.IsTrue(loads.All(l => l.Split(' ')[2] == "OK"), "every 2-D case loads into loralib's layout");
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Builds the family's layers, runs them, and writes inputs, weights and results for the script.</summary>
    private static List<Dictionary<string, object>> WriteCases(string dir, string family)
    {
        using var scope = NewDisposeScope();
        var tensors = new List<(string key, long[] shape, float[] data)>();
        var cases = new List<Dictionary<string, object>>();
        var seed = 1000;
        foreach (var (name, layer, input, info) in Build(family))
        {
            torch.manual_seed(seed++);
            using (no_grad())
            {
                nn.init.normal_(layer.lora_A!, 0, 0.5);
                nn.init.normal_(layer.lora_B!, 0, 0.5);
            }

            var ids = input.dtype == ScalarType.Int64;
            var x = ids ? input : input.detach().requires_grad_(true);
            var y = layer.forward(x);
            var g = randn_like(y);
            (y * g).sum().backward();
            layer.eval();
            Tensor merged;
            using (no_grad())
            {
                merged = layer.forward(x.detach());
            }

            Add(tensors, name, "weight", layer.state_dict()["weight"]);
            if (layer.bias is not null)
            {
                Add(tensors, name, "bias", layer.bias);
            }

            Add(tensors, name, "lora_A", layer.lora_A!);
            Add(tensors, name, "lora_B", layer.lora_B!);
            Add(tensors, name, "x", x);
            Add(tensors, name, "grad_out", g);
            Add(tensors, name, "y", y);
            Add(tensors, name, "y_merged", merged);
            Add(tensors, name, "grad_A", layer.lora_A!.grad!);
            Add(tensors, name, "grad_B", layer.lora_B!.grad!);
            if (!ids)
            {
                Add(tensors, name, "grad_x", x.grad!);
            }

            info["name"] = name;
            info["r"] = layer.r;
            info["alpha"] = layer.lora_alpha;
            info["has_bias"] = layer.bias is not null;
            info["lora_state_dict"] = new[] { "none", "lora_only", "all" }
                .ToDictionary(m => m, m => lora.lora_state_dict(layer, m).Keys.ToArray());
            if (layer is Modules.LoraConvNd conv)
            {
                info["in_channels"] = conv.in_channels;
                info["out_channels"] = conv.out_channels;
                info["kernel_size"] = conv.kernel_size[0];
                foreach (var (key, value) in lora.loralib_state_dict(layer))
                {
                    Add(tensors, name, "loralib." + key, value);
                }
            }
            cases.Add(info);
        }

        PeftFiles.WriteSafetensors(Path.Combine(dir, "tensors.safetensors"), [.. tensors]);
        File.WriteAllText(Path.Combine(dir, "cases.json"), JsonSerializer.Serialize(cases));
        return cases;
    }

    private static IEnumerable<(string name, LoraLayer layer, Tensor x, Dictionary<string, object> info)> Build(string family)
    {
        torch.manual_seed(family.Length);
        switch (family)
        {
            case "Linear":
                yield return ("linear", lora.Linear(6, 5, r: 2, lora_alpha: 4), randn(3, 6), Info("Linear"));
                var fifo = Info("Linear");
                fifo["fan_in_fan_out"] = true;
                yield return ("linear_fan_in_fan_out", lora.Linear(6, 5, r: 3, lora_alpha: 2, fan_in_fan_out: true), randn(2, 4, 6), fifo);
                yield return ("linear_no_bias", lora.Linear(7, 3, r: 1, lora_alpha: 1, bias: false), randn(5, 7), Info("Linear"));
                break;
            case "Embedding":
                var padded = Info("Embedding");
                padded["padding_idx"] = 0;
                yield return ("embedding_padding", lora.Embedding(10, 4, r: 2, lora_alpha: 2, padding_idx: 0),
                    tensor(new long[] { 1, 0, 3, 9, 0, 4 }, 2, 3), padded);
                yield return ("embedding", lora.Embedding(8, 5, r: 3, lora_alpha: 6), tensor(new long[] { 7, 2, 2, 5 }), Info("Embedding"));
                break;
            case "MergedLinear":
                var enable = Info("MergedLinear");
                enable["enable_lora"] = new[] { true, false, true };
                yield return ("merged_linear", lora.MergedLinear(6, 9, r: 2, lora_alpha: 4, enable_lora: [true, false, true]), randn(2, 3, 6), enable);
                var fifoMerged = Info("MergedLinear");
                fifoMerged["enable_lora"] = new[] { false, true };
                fifoMerged["fan_in_fan_out"] = true;
                yield return ("merged_linear_fan_in_fan_out", lora.MergedLinear(5, 8, r: 3, lora_alpha: 3, enable_lora: [false, true], fan_in_fan_out: true),
                    randn(2, 4, 5), fifoMerged);
                break;
            case "Conv1d":
                yield return ("conv1d_k1_groups", lora.Conv1d(4, 6, 1, r: 2, lora_alpha: 2, groups: 2), randn(2, 4, 7), Conv(1, 1, 0, 1, 2));
                yield return ("conv1d_k3", lora.Conv1d(4, 6, 3, r: 2, lora_alpha: 4, stride: 2, padding: 1), randn(2, 4, 9), Conv(1, 2, 1, 1, 1));
                break;
            case "Conv2d":
                yield return ("conv2d", lora.Conv2d(4, 6, 3, r: 2, lora_alpha: 4, stride: 2, padding: 1), randn(2, 4, 7, 7), Conv(2, 2, 1, 1, 1));
                yield return ("conv2d_groups_dilation", lora.Conv2d(4, 6, 3, r: 2, lora_alpha: 2, padding: 2, dilation: 2, groups: 2),
                    randn(2, 4, 6, 6), Conv(2, 1, 2, 2, 2));
                break;
            case "Conv3d":
                yield return ("conv3d", lora.Conv3d(2, 4, 2, r: 2, lora_alpha: 2, padding: 1), randn([1, 2, 4, 4, 4]), Conv(3, 1, 1, 1, 1));
                break;
            case "Conv2dPeft":
                var peft = Conv(2, 1, 1, 1, 1);
                peft["kind"] = "ConvPeft";
                yield return ("conv2d_peft", lora.Conv2d(3, 5, 3, r: 2, lora_alpha: 4, padding: 1, factorization: LoraConvFactorization.Peft),
                    randn(2, 3, 6, 6), peft);
                break;
            default:
                throw new ArgumentException($"unknown family {family}", nameof(family));
        }
    }

    private static Dictionary<string, object> Info(string kind) => new() { ["kind"] = kind };

    private static Dictionary<string, object> Conv(int dims, long stride, long padding, long dilation, long groups) => new()
    {
        ["kind"] = "ConvLoralib",
        ["dims"] = dims,
        ["stride"] = Enumerable.Repeat(stride, dims).ToArray(),
        ["padding"] = Enumerable.Repeat(padding, dims).ToArray(),
        ["dilation"] = Enumerable.Repeat(dilation, dims).ToArray(),
        ["groups"] = groups,
    };

    private static void Add(List<(string key, long[] shape, float[] data)> tensors, string name, string what, Tensor t)
    {
        using var scope = NewDisposeScope();
        var values = t.detach().cpu().to(ScalarType.Float32).contiguous().data<float>().ToArray();
        tensors.Add(($"{name}.{what}", t.shape, values));
    }
}
