using System.Globalization;
using System.Security.Cryptography;
using Microsoft.ML;
using Microsoft.ML.Lora;
using Microsoft.ML.Lora.Data;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Engine.Images;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

[assembly: LoadableClass(typeof(LoraImageTransformer), typeof(LoraImageModelFile), null, typeof(SignatureLoadModel),
    "LoRA fine-tuned image model", LoraImageModelFile.LoaderSignature)]

namespace Microsoft.ML.Lora.Internal;

/// <summary>
/// Saves and loads <see cref="LoraImageTransformer"/> in ML.NET model files. The transformer's zip entry holds, via
/// <c>ctx.Writer</c>: the task and label key values (as the text model file), the column names and inference batch
/// size, the adapter settings (rank, alpha, dropout, target-module regex, rsLoRA, image size, label mean and scale), the
/// base reference (ONNX model and preprocessing paths, SHA-256) and the SHA-256 of the tensor entry; and the binary
/// stream <see cref="TensorStreamName"/> with the LoRA and head tensors only (<see cref="TensorFile"/>).
/// </summary>
internal static class LoraImageModelFile
{
    /// <summary>Loader signature recorded in the model file; must stay stable.</summary>
    public const string LoaderSignature = "LoraFineTunedImageModel";

    /// <summary>Zip entry (inside the transformer's folder) with the adapter tensors.</summary>
    public const string TensorStreamName = "LoraAdapter.bin";

    private const string ModelSignature = "LORAIMAG";

    // 0x00010001: first format.
    private const uint VersionCurrent = 0x00010001;

    private static VersionInfo GetVersionInfo() => new(
        ModelSignature,
        verWrittenCur: VersionCurrent,
        verReadableCur: VersionCurrent,
        verWeCanReadBack: VersionCurrent,
        loaderAssemblyName: typeof(LoraImageModelFile).Assembly.FullName,
        loaderSignature: LoaderSignature);

    public static void Save(LoraImageTransformer transformer, ModelSaveContext ctx)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo());
        var w = ctx.Writer;
        var model = transformer.Model;
        var label = model.Label;
        var settings = model.Settings;
        var columns = transformer.Columns;

        w.Write((int)label.Kind);
        w.Write(label.ClassCount);
        w.Write(LabelInfo.TypeName(label.KeyValueType));
        w.Write(label.KeyValues?.Count ?? 0);
        foreach (var value in label.KeyValues ?? [])
        {
            w.Write(value);
        }

        w.Write(columns.Text);
        w.Write(columns.Score);
        w.Write(columns.PredictedLabel);
        w.Write(columns.Probability);
        w.Write(transformer.InferenceBatchSize);

        w.Write(settings.Rank);
        w.Write(settings.Alpha);
        w.Write(settings.Dropout);
        w.Write(settings.TargetModules);
        w.Write(settings.UseRsLora);
        w.Write(settings.ImageSize);
        w.Write(settings.LabelMean);
        w.Write(settings.LabelScale);

        w.Write(model.Base.ModelPath);
        w.Write(model.Base.PreprocessPath);
        w.Write(model.BaseWeightsSha256);

        var state = model.AdapterState();
        try
        {
            using var tensors = new MemoryStream();
            using (var tensorWriter = new BinaryWriter(tensors, System.Text.Encoding.UTF8, leaveOpen: true))
            {
                TensorFile.Write(tensorWriter, state);
            }

            var bytes = tensors.ToArray();
            w.Write(Convert.ToHexString(SHA256.HashData(bytes)));
            ctx.SaveBinaryStream(TensorStreamName, writer => writer.Write(bytes));
        }
        finally
        {
            LoraTrainer.DisposeState(state);
        }
    }

    /// <summary>Called by ML.NET's loader (<c>mlContext.Model.Load</c>) through <see cref="LoadableClassAttribute"/>.</summary>
    public static LoraImageTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        ArgumentNullException.ThrowIfNull(env);
        ArgumentNullException.ThrowIfNull(ctx);
        if (ctx.Header.ModelVerReadable > VersionCurrent)
        {
            throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                $"This LoRA image model file has format version 0x{ctx.Header.ModelVerWritten:X8} and needs a reader of version 0x{ctx.Header.ModelVerReadable:X8} or later; " +
                $"this Microsoft.ML.Lora ({typeof(LoraImageModelFile).Assembly.GetName().Version}) reads format versions up to 0x{VersionCurrent:X8}. Update the Microsoft.ML.Lora package."));
        }

        ctx.CheckAtModel(GetVersionInfo());
        var r = ctx.Reader;

        var task = (LoraTaskKind)r.ReadInt32();
        if (!Enum.IsDefined(task))
        {
            throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture, $"Unknown task {(int)task} in this LoRA image model file."));
        }

        int classCount = r.ReadInt32();
        var keyValueType = LabelInfo.ParseTypeName(r.ReadString());
        var keyValues = new string[r.ReadInt32()];
        for (int i = 0; i < keyValues.Length; i++)
        {
            keyValues[i] = r.ReadString();
        }

        var label = LabelInfo.Create(task, classCount, keyValues.Length > 0 ? keyValueType : null, keyValues.Length > 0 ? keyValues : null);
        var columns = new ColumnNames(r.ReadString(), null, r.ReadString(), r.ReadString(), r.ReadString());
        int inferenceBatchSize = r.ReadInt32();
        var settings = new ImageAdapterSettings(r.ReadInt32(), r.ReadDouble(), r.ReadDouble(), r.ReadString(), r.ReadBoolean(), r.ReadInt32(), r.ReadSingle(), r.ReadSingle());
        var recorded = new ImageBase(r.ReadString(), r.ReadString());
        string sha = r.ReadString();
        string checksum = r.ReadString();

        SortedDictionary<string, Tensor>? state = null;
        if (!ctx.TryLoadBinaryStream(TensorStreamName, reader => state = ReadTensors(reader, checksum)) || state is null)
        {
            throw new InvalidDataException($"This LoRA image model file has no '{TensorStreamName}' entry with the adapter tensors.");
        }

        try
        {
            var device = DeviceResolver.Resolve(env);
            var (network, normalization, found) = ImageBaseResolver.Resolve(recorded, sha, label.OutputCount, device);
            var model = LoraImageModel.Create(network, normalization, found, sha, device, label, settings, seed: 0, merge: true);
            try
            {
                model.LoadAdapterState(state);
                model.Model.eval();
                return new LoraImageTransformer(model, columns, inferenceBatchSize);
            }
            catch
            {
                model.Dispose();
                throw;
            }
        }
        finally
        {
            LoraTrainer.DisposeState(state);
        }
    }

    /// <summary>Reads the tensor entry after checking its SHA-256 against the one recorded in Model.key.</summary>
    /// <exception cref="InvalidDataException">The entry's bytes do not match the recorded SHA-256.</exception>
    private static SortedDictionary<string, Tensor> ReadTensors(BinaryReader reader, string checksum)
    {
        using var bytes = new MemoryStream();
        reader.BaseStream.CopyTo(bytes);
        string actual = Convert.ToHexString(SHA256.HashData(bytes.GetBuffer().AsSpan(0, (int)bytes.Length)));
        if (!string.Equals(actual, checksum, StringComparison.OrdinalIgnoreCase))
        {
            throw new InvalidDataException(
                $"The '{TensorStreamName}' entry of this LoRA image model file is damaged: its SHA-256 is {actual}, the model file recorded {checksum}.");
        }

        bytes.Position = 0;
        using var copy = new BinaryReader(bytes, System.Text.Encoding.UTF8, leaveOpen: true);
        return TensorFile.Read(copy);
    }
}
